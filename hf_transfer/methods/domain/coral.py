"""Deep CORAL: correlation alignment (Sun & Saenko, ECCV-W 2016, https://arxiv.org/abs/1607.01719).

    L_coral = ||C_s - C_t||_F^2 / (4 d^2),    C = (X^T X - (1^T X)^T (1^T X) / n) / (n - 1)

with ``C_s``, ``C_t`` the (d x d) covariance matrices of the source and target features. The loss is
invariant to a shift of either domain's mean (only second-order statistics are aligned).

The paper's ``1 / (4 d^2)`` scale is kept, which makes the term tiny: with a 128-d bottleneck and
trade-off weight 1 it had no visible effect in a prototype. The paper chooses the weight so that the
CORAL and classification losses are about equal at the end of training; in practice expect a
trade-off weight of 100 or more (set by the Trainer, not here). Unlike TLlib's
``CorrelationAlignmentLoss`` no mean-difference term is added and the scale is not changed.
"""

from __future__ import annotations

import torch

from hf_transfer.methods.domain.base import TransferLoss
from hf_transfer.methods.domain.registry import register_loss


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The unbiased ``[D, D]`` covariance of the rows of ``x`` (at least 2)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("CORAL needs at least 2 samples per domain")
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / (n - 1)


def coral(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The CORAL distance: squared Frobenius gap of the two domains' feature covariances over ``4 d^2``."""
    dt = torch.promote_types(f_s.dtype, torch.float32)  # covariances in at least float32
    f_s, f_t = f_s.flatten(1).to(dt), f_t.flatten(1).to(dt)
    d = f_s.shape[1]
    return (covariance(f_s) - covariance(f_t)).pow(2).sum() / (4.0 * d * d)


@register_loss(
    "coral",
    title="Deep CORAL",
    paper="https://arxiv.org/abs/1607.01719",
    description="Second-order statistics (feature covariances) of source and target are aligned.",
)
class CORALLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0) -> None:
        super().__init__()

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return coral(f_s, f_t)
