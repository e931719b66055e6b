"""AFN: Stepwise Adaptive Feature Norm (Xu et al., ICCV 2019, https://arxiv.org/abs/1811.07456).

The paper finds target features with much smaller norms than source features, and that features of larger
norm transfer better. SAFN enlarges every sample's feature norm by a step ``delta_r`` at each iteration, in
both domains:

    L_safn = 1/n_s sum_s (||f_i|| - (||f_i||_0 + delta_r))^2 + 1/n_t sum_t (||f_j|| - (||f_j||_0 + delta_r))^2

with ``||f||_0`` the norm at the current weights, detached: the value is always ``2 delta_r^2``, and its
gradient ``-2 delta_r f / (n ||f||)`` per sample moves each feature outwards along its own direction, so the
norms grow step by step instead of towards a fixed radius (the paper's hard variant, HAFN). The paper's
trade-off is ``lambda = 0.05`` (``--trade_off 0.05``) with ``delta_r = 1``.

As in the paper and TLlib, the classifier's input goes through an L2-preserving dropout while training:
``x_hat = mask * x / sqrt(1 - p)`` (plain dropout scales by ``1 / (1 - p)``), so ``E ||x_hat||^2 = ||x||^2``
and the norms the loss enlarges are the norms the classifier sees at evaluation. The loss sees the same
dropped-out features as the classifier (:meth:`AFNLoss.classifier_input`). Source and target features only;
the logits are unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import TransferLoss
from hf_transfer.methods.domain.registry import register_loss


def stepwise_feature_norm(features: torch.Tensor, delta: float) -> torch.Tensor:
    """SAFN's term of one domain: the mean squared gap between each norm and its detached value plus ``delta``."""
    norms = features.flatten(1).float().norm(p=2, dim=1)
    return (norms - (norms.detach() + delta)).pow(2).mean()


def l2_preserving_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout that keeps the expected squared norm: kept entries scaled by ``1 / sqrt(1 - p)``."""
    if not training or p == 0.0:
        return x
    return F.dropout(x, p, training=True) * math.sqrt(1.0 - p)


@dataclass(frozen=True)
class AFNOptions:
    delta: float = field(default=1.0, metadata={"help": "Step delta_r by which every feature norm is enlarged."})
    dropout: float = field(
        default=0.5, metadata={"help": "L2-preserving dropout on the classifier's input while training (0: none)."}
    )


@register_loss(
    "afn",
    title="AFN, stepwise adaptive feature norm",
    paper="https://arxiv.org/abs/1811.07456",
    config=AFNOptions,
    description="The feature norm of every sample of both domains is enlarged step by step "
    "(use --trade_off 0.05, the paper's).",
)
class AFNLoss(TransferLoss):
    changes_classifier_input = True

    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        if self.options.delta <= 0:
            raise ValueError(f"delta must be > 0, got {self.options.delta}")
        if not 0.0 <= self.options.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.options.dropout}")

    def classifier_input(self, features: torch.Tensor) -> torch.Tensor:
        """The L2-preserving dropout of the features while training; the features themselves in evaluation."""
        return l2_preserving_dropout(features, self.options.dropout, self.training)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SAFN over the source and the target batch (their terms summed, as in the paper's code)."""
        delta = self.options.delta
        with torch.no_grad():
            self.last_metrics = {
                "source_norm": float(f_s.flatten(1).float().norm(dim=1).mean()),
                "target_norm": float(f_t.flatten(1).float().norm(dim=1).mean()),
            }
        return stepwise_feature_norm(f_s, delta) + stepwise_feature_norm(f_t, delta)

    def extra_repr(self) -> str:
        return f"delta={self.options.delta}, dropout={self.options.dropout}"
