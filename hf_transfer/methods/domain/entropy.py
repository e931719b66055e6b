"""Entropy minimisation and information maximisation on target predictions.

* ``entropy`` (Grandvalet & Bengio, NeurIPS 2004,
  https://papers.nips.cc/paper/2740-semi-supervised-learning-by-entropy-minimization):
  ``L_ent = 1/B * sum_i H(p_i)``, ``p_i = softmax(logits_t_i)``.
* ``im`` (information maximisation as in SHOT, Liang et al., ICML 2020, https://arxiv.org/abs/2002.08546):
  ``L_im = 1/B * sum_i H(p_i) - diversity * H(1/B * sum_i p_i)``: confident individual predictions
  (low mean entropy) that are diverse over the batch (high entropy of the mean prediction). Its
  minimum, ``-log C`` for ``diversity=1``, is reached by one-hot predictions balanced over the classes;
  plain entropy minimisation is also minimal when every sample collapses onto one class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import TransferLoss, _atleast_float32, entropy, require_logits
from hf_transfer.methods.domain.registry import register_loss


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The mean entropy of the softmax predictions of ``logits``."""
    return entropy(F.softmax(_atleast_float32(logits), dim=1)).mean()


def information_maximization_loss(logits: torch.Tensor, diversity: float = 1.0) -> torch.Tensor:
    """Mean prediction entropy minus ``diversity`` times the entropy of the mean prediction (SHOT's IM loss)."""
    p = F.softmax(_atleast_float32(logits), dim=1)
    return entropy(p).mean() - diversity * entropy(p.mean(0), dim=0)


@register_loss(
    "entropy",
    title="Entropy minimisation",
    paper="https://papers.nips.cc/paper/2740-semi-supervised-learning-by-entropy-minimization",
    description="The entropy of the target predictions is minimised (confident target predictions).",
)
class EntropyLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0) -> None:
        super().__init__()

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_t = require_logits("entropy", logits_t)
        return mean_entropy(logits_t)


@dataclass(frozen=True)
class IMOptions:
    diversity: float = field(default=1.0, metadata={"help": "Weight of the diversity term H(mean prediction)."})


@register_loss(
    "im",
    title="IM, information maximisation",
    paper="https://arxiv.org/abs/2002.08546",
    config=IMOptions,
    description="Target predictions are made confident individually and diverse over the batch (SHOT's IM).",
)
class InformationMaximizationLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        self.diversity = float(self.options.diversity)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_t = require_logits("im", logits_t)
        return information_maximization_loss(logits_t, self.diversity)

    def extra_repr(self) -> str:
        return f"diversity={self.diversity}"
