"""Source-only baseline: no alignment term (the loss is a constant 0).

Registered so that ``source_only`` is a method like the others; the Trainer may also skip it.
"""

from __future__ import annotations

import torch

from hf_transfer.methods.domain.base import TransferLoss
from hf_transfer.methods.domain.registry import register_loss


@register_loss(
    "source_only",
    title="Source only (no adaptation)",
    default=True,
    target_images=False,
    description="Trained on the labelled source domain only: the baseline every adaptation method is compared with.",
)
class SourceOnlyLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0) -> None:
        super().__init__()

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Connected to the graph with a zero gradient, so .backward() always works.
        return f_s.sum() * 0.0
