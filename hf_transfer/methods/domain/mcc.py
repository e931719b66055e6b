"""MCC: Minimum Class Confusion (Jin et al., ECCV 2020, https://arxiv.org/abs/1912.03699).

On the target batch, with ``Y = softmax(logits_t / T)`` (B x C) and temperature ``T`` (2.5 in the paper):

    H_i  = -sum_j Y_ij log Y_ij
    W_ii = B * (1 + exp(-H_i)) / sum_k (1 + exp(-H_k))          (entropy weighting, detached)
    C    = Y^T W Y                                               (C x C class correlation)
    C~_jj' = C_jj' / sum_j'' C_jj''                              (category normalisation)
    L_mcc = 1/C * sum_j sum_{j' != j} |C~_jj'|

Confident, class-separated predictions give a near-diagonal ``C~`` and a loss near 0; confused
predictions give a large off-diagonal mass (at most ``(C - 1) / C``). Source features are unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import TransferLoss, _atleast_float32, entropy, require_logits
from hf_transfer.methods.domain.registry import register_loss


def mcc(logits_t: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """The class confusion of the target predictions that MCC minimises.

    Entropy-weighted and row-normalised; its mass off the diagonal, over C."""
    b, c = logits_t.shape
    y = F.softmax(_atleast_float32(logits_t) / temperature, dim=1)
    with torch.no_grad():
        w = 1.0 + torch.exp(-entropy(y))
        w = b * w / w.sum()
    conf = (y * w.unsqueeze(1)).T @ y
    conf = conf / conf.sum(dim=1, keepdim=True)
    return (conf.sum() - conf.trace()) / c


@dataclass(frozen=True)
class MCCOptions:
    temperature: float = field(
        default=2.5, metadata={"help": "Softmax temperature T of the target predictions (2.5 in the paper)."}
    )


@register_loss(
    "mcc",
    title="MCC, minimum class confusion",
    paper="https://arxiv.org/abs/1912.03699",
    config=MCCOptions,
    description="Confusion between classes in the target predictions is minimised.",
)
class MCCLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        temperature = self.options.temperature
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_t = require_logits("mcc", logits_t)
        return mcc(logits_t, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
