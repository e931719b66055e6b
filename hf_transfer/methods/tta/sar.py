"""SAR: sharpness-aware and reliable entropy minimisation (Niu et al., ICLR 2023, https://arxiv.org/abs/2302.12400).

For each test batch, with ``E_0 = entropy_margin * ln C`` (the authors' 0.4 ln 1000):

1. the mean entropy of the reliable rows (``H_i < E_0``) is back-propagated, and the adapted parameters move to
   ``w + rho g / ||g||`` (sharpness-aware minimisation's ascent step, rho 0.05; SDAT's
   :func:`~hf_transfer.methods.domain.sdat.sharpness_perturbation`);
2. there, the rows kept by 1. are predicted again, those still reliable give the loss whose gradient, taken back at
   ``w``, is the optimizer's step.

Model recovery: the loop's collapse detector (``--reset on_collapse``, SAR's default) averages the second loss
(``0.9`` moving average) and resets the model when it falls below ``--collapse_entropy`` (0.2), as the authors'
code does. The batch is predicted with the logits of the first forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hf_transfer.methods.domain.sdat import sharpness_perturbation
from hf_transfer.methods.tta.base import TestTimeMethod, entropy_margin, register_tta, softmax_entropy


@dataclass(frozen=True)
class SAROptions:
    entropy_margin: float = field(
        default=0.4, metadata={"help": "Reliability margin E_0 as a fraction of ln(number of classes)."}
    )
    rho: float = field(default=0.05, metadata={"help": "SAM radius: the size of the ascent step."})


@register_tta(
    "sar",
    title="SAR, sharpness-aware reliable test-time entropy minimisation",
    description="Entropy minimisation on the reliable test samples with sharpness-aware steps; the model is "
    "reset when its entropy collapses.",
    paper="https://arxiv.org/abs/2302.12400",
    config=SAROptions,
    learning_rate=0.00025,
    reset="on_collapse",
)
class SAR(TestTimeMethod):
    def __init__(
        self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, num_classes: int, **options: Any
    ) -> None:
        super().__init__(params, optimizer, num_classes, **options)
        if self.options.rho < 0:
            raise ValueError(f"rho must be >= 0, got {self.options.rho}")
        self.margin = entropy_margin(self.options.entropy_margin, self.num_classes)

    def adapt(self, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The two passes of the module docstring; no step when no row is reliable."""
        logits = forward()
        entropy = softmax_entropy(logits)
        reliable = torch.nonzero(entropy.detach() < self.margin).flatten()
        self.last_metrics = {"reliable": float(reliable.numel()) / max(1, len(logits)), "collapse_signal": float("nan")}
        if reliable.numel() == 0:
            self.optimizer.zero_grad(set_to_none=True)
            return logits.detach()
        entropy[reliable].mean().backward()
        perturbation = sharpness_perturbation(self.params, self.options.rho)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, e in zip(self.params, perturbation or [], strict=False):
                p.add_(e)
        second = softmax_entropy(forward())[reliable]
        still = second.detach() < self.margin
        if bool(still.any()):
            loss = second[still].mean()
            loss.backward()
            self.last_metrics["collapse_signal"] = float(loss.detach())
        with torch.no_grad():
            for p, e in zip(self.params, perturbation or [], strict=False):
                p.sub_(e)
        if bool(still.any()):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logits.detach()
