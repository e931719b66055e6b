"""BNM: Batch Nuclear-norm Maximization (Cui et al., CVPR 2020, https://arxiv.org/abs/2003.12237).

On the target batch, with ``A = softmax(logits_t)`` (B x C):

    L_bnm = - mean_k sigma_k(A)                 (the singular values of A, as the authors' code takes them)

The nuclear norm ``||A||_* = sum_k sigma_k(A)`` bounds the Frobenius norm, which grows as the predictions become
confident (discriminability), and the rank of ``A``, which grows as they spread over the classes (diversity):
maximising it asks for both at once, where plain entropy minimisation may collapse every sample onto one class.
Source features are unused. The SVD runs in float32 at least (half precision has no SVD on most devices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import TransferLoss, _atleast_float32, require_logits
from hf_transfer.methods.domain.registry import register_loss


def batch_nuclear_norm(logits: torch.Tensor) -> torch.Tensor:
    """The mean singular value of the batch's softmax prediction matrix (the quantity BNM maximises)."""
    return torch.linalg.svdvals(F.softmax(_atleast_float32(logits), dim=1)).mean()


@register_loss(
    "bnm",
    title="BNM, batch nuclear-norm maximisation",
    paper="https://arxiv.org/abs/2003.12237",
    description="The nuclear norm of the target prediction matrix is maximised: confident and diverse predictions.",
)
class BNMLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0) -> None:
        super().__init__()

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Minus the batch nuclear norm of the target predictions."""
        norm = batch_nuclear_norm(require_logits("bnm", logits_t))
        self.last_metrics = {"nuclear_norm": float(norm.detach())}
        return -norm
