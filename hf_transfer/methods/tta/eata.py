"""EATA: efficient anti-forgetting test-time adaptation (Niu et al., ICML 2022, https://arxiv.org/abs/2204.02610).

TENT's entropy minimisation on the samples worth it. With ``H_i`` the entropy of row ``i``'s prediction:

* reliable: only rows with ``H_i < E_0`` (``E_0 = entropy_margin * ln C``; the authors' 0.4 ln 1000);
* non-redundant: of those, only rows whose prediction's cosine similarity to the moving mean prediction ``m``
  is below ``redundancy_margin`` (0.05); ``m <- 0.9 m + 0.1 mean(p of the rows kept)`` after each batch;
* weighted: ``L = 1/|S| sum_{i in S} exp(E_0 - H_i) H_i`` (the weight is a constant), no step when ``S`` is empty.

The paper's Fisher regulariser (anti-forgetting, from in-distribution samples) is not included: hf-transfer's TTA
sees the target test images only. The loop's collapse detector averages the mean entropy of the kept rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_transfer.methods.tta.base import TestTimeMethod, entropy_margin, register_tta, softmax_entropy


@dataclass(frozen=True)
class EATAOptions:
    entropy_margin: float = field(
        default=0.4, metadata={"help": "Reliability margin E_0 as a fraction of ln(number of classes)."}
    )
    redundancy_margin: float = field(
        default=0.05,
        metadata={"help": "Rows whose prediction is at least this cosine-similar to the moving mean are skipped."},
    )


@register_tta(
    "eata",
    title="EATA, efficient test-time adaptation (entropy and redundancy filters)",
    description="Entropy minimisation on the reliable (low-entropy) and non-redundant test samples only, "
    "weighted by their confidence; no Fisher regulariser.",
    paper="https://arxiv.org/abs/2204.02610",
    config=EATAOptions,
    learning_rate=0.00025,
)
class EATA(TestTimeMethod):
    def __init__(
        self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, num_classes: int, **options: Any
    ) -> None:
        super().__init__(params, optimizer, num_classes, **options)
        self.margin = entropy_margin(self.options.entropy_margin, self.num_classes)
        self.moving_mean: torch.Tensor | None = None

    def reset(self) -> None:
        """The moving mean prediction starts again."""
        self.moving_mean = None

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """The rows kept by both filters (indices into the batch)."""
        entropy = softmax_entropy(logits.detach())
        reliable = torch.nonzero(entropy < self.margin).flatten()
        if self.moving_mean is None or reliable.numel() == 0:
            return reliable
        probs = logits.detach().float()[reliable].softmax(1)
        similarity = F.cosine_similarity(self.moving_mean[None].to(probs), probs, dim=1)
        return reliable[similarity.abs() < self.options.redundancy_margin]

    def adapt(self, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The filtered, weighted entropy step; the moving mean prediction updated with the rows kept."""
        logits = forward()
        kept = self.select(logits)
        entropy = softmax_entropy(logits)[kept]
        if kept.numel():
            probs = logits.detach().float()[kept].softmax(1).mean(0)
            self.moving_mean = probs if self.moving_mean is None else 0.9 * self.moving_mean + 0.1 * probs
            weight = torch.exp(self.margin - entropy.detach())
            loss = (entropy * weight).mean()
            self.step(loss)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        value = float(entropy.detach().mean()) if kept.numel() else float("nan")
        self.last_metrics = {"kept": float(kept.numel()) / max(1, len(logits)), "collapse_signal": value}
        return logits.detach()
