"""MCD: Maximum Classifier Discrepancy (Saito et al., CVPR 2018, https://arxiv.org/abs/1712.02560).

Two classifiers ``F1`` (the model's own head, the one exported) and ``F2`` (a second head of the same
shape, this method's module) sit on the features ``G(x)``. With ``p_i = softmax(F_i(G(x)))``,
``d(p1, p2) = mean |p1 - p2|`` (the L1 discrepancy) and ``H`` the mean prediction entropy, each optimizer
step takes three steps on the same batch, as TLlib's ``mcd.py`` does:

    A: G, F1, F2 minimise   CE(p1_s) + CE(p2_s) + eta * (H(p1_t) + H(p2_t))
    B: F1, F2 minimise      CE(p1_s) + CE(p2_s) + eta * (H(p1_t) + H(p2_t)) - w * d(p1_t, p2_t)
    C: G minimises          w * d(p1_t, p2_t)            (``num_k`` times)

with ``w`` the mode's trade-off weight (``--trade_off``, ``--trade_off_schedule``) and ``eta`` the entropy
weight (TLlib's ``trade_off_entropy``, 0.01). Step B holds ``G`` fixed, so its features are computed
without gradient (the backbone's backward is skipped there). The heads are single linear layers on the
pooled (or ``--bottleneck_dim``) features, where TLlib's each carry a bottleneck MLP: with
``--bottleneck_dim`` the shared bottleneck plays that part. The last update of step C is the Trainer's
own optimizer step (clipping, scheduling and logging as for every method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_transfer.methods.domain.base import _atleast_float32, require_logits
from hf_transfer.methods.domain.entropy import mean_entropy
from hf_transfer.methods.domain.registry import register_loss
from hf_transfer.methods.domain.step import CLASSIFIER, FEATURES, METHOD, PARTS, SteppedLoss, StepRunner


def classifier_discrepancy(logits_1: torch.Tensor, logits_2: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the two classifiers' probabilities (the paper's L1 discrepancy)."""
    return (F.softmax(_atleast_float32(logits_1), 1) - F.softmax(_atleast_float32(logits_2), 1)).abs().mean()


@dataclass(frozen=True)
class MCDOptions:
    num_k: int = field(default=4, metadata={"help": "Times step C (G minimises the discrepancy) runs per batch."})
    entropy_weight: float = field(
        default=0.01, metadata={"help": "Weight eta of the target prediction entropy in steps A and B."}
    )


@register_loss(
    "mcd",
    find_unused_parameters=True,  # step B leaves the backbone without a gradient
    title="MCD, maximum classifier discrepancy",
    paper="https://arxiv.org/abs/1712.02560",
    config=MCDOptions,
    description="Two classifiers maximise their disagreement on the target; the features minimise it.",
)
class MCDLoss(SteppedLoss):
    frozen_feature_phases = frozenset({"b"})

    def __init__(self, feature_dim: int, num_classes: int, **options: Any) -> None:
        super().__init__(**options)
        if self.options.num_k < 1:
            raise ValueError(f"num_k must be >= 1, got {self.options.num_k}")
        if self.options.entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.options.entropy_weight}")
        self.second_head = nn.Linear(int(feature_dim), int(num_classes))

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Step C's term: the discrepancy of the two classifiers on the target batch."""
        logits_t = require_logits("mcd", logits_t)
        loss = classifier_discrepancy(logits_t, self.second_head(f_t))
        self.last_metrics = {"discrepancy": float(loss.detach())}
        return loss

    def train_step(self, runner: StepRunner) -> torch.Tensor:
        """Steps A, B and ``num_k`` times C (the last one the Trainer's); reports step A's loss."""
        reported = runner.backward("a")
        runner.update(PARTS)
        runner.backward("b")
        runner.update((CLASSIFIER, METHOD))
        for k in range(self.options.num_k):
            runner.backward("c")
            if k < self.options.num_k - 1:
                runner.update((FEATURES,))
        runner.keep((FEATURES,))
        return reported

    def phase_loss(
        self,
        phase: str,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor,
        logits_t: torch.Tensor,
        source_loss: Callable[[torch.Tensor], torch.Tensor],
        weight: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Steps A, B, C of the module docstring on one batch."""
        second_s, second_t = self.second_head(f_s), self.second_head(f_t)
        discrepancy = classifier_discrepancy(logits_t, second_t)
        if phase == "c":
            return weight * discrepancy, {"discrepancy": float(discrepancy.detach())}
        if phase not in ("a", "b"):
            raise ValueError(f"mcd has phases a, b, c; got {phase!r}")
        cls_loss = source_loss(logits_s) + source_loss(second_s)
        ent = mean_entropy(logits_t) + mean_entropy(second_t)
        loss = cls_loss + self.options.entropy_weight * ent
        metrics = {"cls_loss": float(cls_loss.detach()), "entropy": float(ent.detach())}
        if phase == "b":
            loss = loss - weight * discrepancy
            metrics["discrepancy"] = float(discrepancy.detach())
        return loss, metrics

    def extra_repr(self) -> str:
        return f"num_k={self.options.num_k}, entropy_weight={self.options.entropy_weight}"
