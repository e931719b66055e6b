"""MDD: Margin Disparity Discrepancy (Zhang et al., ICML 2019, "Bridging Theory and Algorithm for
Domain Adaptation", https://arxiv.org/abs/1904.05801).

An auxiliary classifier ``h'`` (the adversarial head) sees the features through a gradient reversal
layer ``R``. With ``y = argmax`` of the main classifier's logits (detached: the main classifier only
supplies labels here) and ``p' = softmax(h'(R(f)))``:

    L_mdd = gamma * 1/n_s sum_s CE(h'(R(f_s)), y_s)  +  1/n_t sum_t -log(1 - p'_{y_t}(R(f_t)))

``h'`` minimises ``L_mdd``: it agrees with the main classifier on the source and disagrees with it on
the target, so ``L_mdd`` measures (minus) the margin disparity discrepancy between the domains;
through ``R`` the features maximise it, i.e. shrink the discrepancy. ``gamma = margin`` (4 in the
paper's code; 1 gives the plain disparity discrepancy). ``log(1 - p')`` is computed with ``p'``
clamped below ``1 - 1e-6`` so its gradient stays bounded when the head is sure.

Schedules and rates as in the paper's code: the reversal coefficient ramps to ``hi = 0.1`` (the
paper's warm start over its first ~1000 of 20000 iterations; here ``alpha = 10`` over the training
progress, no hold), and the backbone trains at 0.1x the learning rate (registered
``backbone_lr_scale``; ``--backbone_lr_scale`` overrides it). The adversarial head is
``Linear(d, width) -> ReLU -> Dropout -> Linear(width, C)`` at the full learning rate. With
``source_weight`` (PADA) the source term is a weighted mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_transfer.methods.domain.base import AdversarialLoss, GRLOptions, _atleast_float32, require_logits
from hf_transfer.methods.domain.registry import register_loss

CLAMP = 1e-6


@dataclass(frozen=True)
class MDDOptions(GRLOptions):
    hi: float = field(default=0.1, metadata={"help": "Final GRL coefficient (0.1 in the paper's code)."})
    hold: float = field(
        default=0.0, metadata={"help": "GRL coefficient held at 0 for this first fraction of training."}
    )
    margin: float = field(
        default=4.0, metadata={"help": "Margin gamma: weight of the source disparity (4 in the paper's code)."}
    )
    width: int = field(default=1024, metadata={"help": "Hidden width of the adversarial head."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout in the adversarial head."})


@register_loss(
    "mdd",
    title="MDD, margin disparity discrepancy",
    paper="https://arxiv.org/abs/1904.05801",
    config=MDDOptions,
    backbone_lr_scale=0.1,
    description="An adversarial auxiliary classifier behind a gradient-reversal layer measures the margin "
    "disparity discrepancy, which the features minimise.",
)
class MDDLoss(AdversarialLoss):
    uses_source_weight = True

    def __init__(self, feature_dim: int, num_classes: int, **options: Any) -> None:
        super().__init__(**options)
        if num_classes < 1 or self.options.margin <= 0:
            raise ValueError(f"MDD needs num_classes >= 1 and margin > 0, got {num_classes}, {self.options.margin}")
        self.margin = float(self.options.margin)
        self.adversarial_head = nn.Sequential(
            nn.Linear(feature_dim, self.options.width),
            nn.ReLU(),
            nn.Dropout(self.options.dropout),
            nn.Linear(self.options.width, num_classes),
        )

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
        source_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_s = require_logits("mdd", logits_s)
        logits_t = logits_t = require_logits("mdd", logits_t)
        n_s = f_s.shape[0]
        features, coeff = self.reverse(torch.cat([f_s, f_t], dim=0))
        adv = _atleast_float32(self.adversarial_head(features))
        with torch.no_grad():
            y_s, y_t = logits_s.argmax(1), logits_t.argmax(1)
        source = F.cross_entropy(adv[:n_s], y_s, reduction="none")
        p_t = F.softmax(adv[n_s:], dim=1).gather(1, y_t[:, None])[:, 0]
        target = -torch.log1p(-p_t.clamp(max=1.0 - CLAMP))
        if source_weight is None:
            source_term = source.mean()
        else:
            w = source_weight.detach().reshape(-1).to(source.dtype)
            source_term = (source * w).sum() / w.sum()
        self.last_metrics = {
            "grl_coeff": coeff,
            "source_disparity": float(source_term.detach()),
            "target_disparity": float(target.detach().mean()),
        }
        return self.margin * source_term + target.mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, {super().extra_repr()}"
