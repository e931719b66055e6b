"""SDAT: Smooth Domain Adversarial Training (Rangwani et al., CVPR 2022, https://arxiv.org/abs/2206.08213).

CDAN + MCC trained with sharpness-aware minimisation (SAM, Foret et al., ICLR 2021) on the classification
loss only: the source loss's minimum is made flat, the adversarial term is left as it is (a flat
adversarial loss hurts adaptation, the paper shows). Each optimizer step takes two passes on the batch:

    1. g = grad of CE(source) over the model (features + classifier);  e = rho * g / ||g||
    2. at the perturbed weights w + e:  L = CE(source) + w_t * (L_cdan + L_mcc); its gradient is taken,
       the weights are restored to w, and the Trainer's optimizer steps with that gradient

``w_t`` is the mode's trade-off weight; the domain discriminator is not perturbed and steps with the
gradient of pass 2. ``L_cdan`` and ``L_mcc`` are :mod:`~hf_transfer.methods.domain.cdan` (options as
``cdan``'s) and :mod:`~hf_transfer.methods.domain.mcc` (``temperature``). The paper's ``rho`` is 0.02
(Office-Home, VisDA) to 0.05. Under DDP the pass-1 gradient is all-reduced, so every process perturbs alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hf_transfer.methods.domain.base import require_logits
from hf_transfer.methods.domain.cdan import CDANLoss, CDANOptions
from hf_transfer.methods.domain.mcc import mcc
from hf_transfer.methods.domain.registry import register_loss
from hf_transfer.methods.domain.step import CLASSIFIER, FEATURES, PARTS, SteppedLoss, StepRunner


@dataclass(frozen=True)
class SDATOptions(CDANOptions):
    rho: float = field(default=0.02, metadata={"help": "SAM radius: the size of the weight perturbation (pass 1)."})
    temperature: float = field(default=2.5, metadata={"help": "MCC's softmax temperature of the target predictions."})


def sharpness_perturbation(params: list[torch.nn.Parameter], rho: float) -> list[torch.Tensor] | None:
    """SAM's ascent step ``rho * g / ||g||`` per parameter (None when the gradient is zero or not finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        return None
    scale = rho / (norm + 1e-12)
    return [(p.grad.float() * scale).to(p.dtype) if p.grad is not None else torch.zeros_like(p) for p in params]


@register_loss(
    "sdat",
    find_unused_parameters=True,  # pass 1 leaves the domain discriminator without a gradient
    title="SDAT, smooth domain-adversarial training",
    paper="https://arxiv.org/abs/2206.08213",
    config=SDATOptions,
    description="CDAN + MCC with sharpness-aware minimisation of the classification loss.",
)
class SDATLoss(SteppedLoss):
    def __init__(self, feature_dim: int, num_classes: int, **options: Any) -> None:
        super().__init__(**options)
        if self.options.rho < 0:
            raise ValueError(f"rho must be >= 0, got {self.options.rho}")
        if self.options.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.options.temperature}")
        cdan_names = {f.name for f in dataclasses.fields(CDANOptions)}
        cdan_options = {k: v for k, v in dataclasses.asdict(self.options).items() if k in cdan_names}
        self.cdan = CDANLoss(feature_dim, num_classes, **cdan_options)

    def set_progress(self, progress: float) -> None:
        """The progress drives CDAN's reversal schedule too."""
        super().set_progress(progress)
        self.cdan.set_progress(progress)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The alignment term of pass 2: CDAN + MCC."""
        cdan = self.cdan(f_s, f_t, logits_s, logits_t)
        confusion = mcc(require_logits("sdat", logits_t), self.options.temperature)
        self.last_metrics = {**self.cdan.last_metrics, "cdan": float(cdan.detach()), "mcc": float(confusion.detach())}
        return cdan + confusion

    def train_step(self, runner: StepRunner) -> torch.Tensor:
        """Pass 1 on the classification loss, the SAM perturbation, pass 2 at the perturbed weights."""
        params = runner.parameters((FEATURES, CLASSIFIER))
        runner.backward("sharpness")
        perturbation = sharpness_perturbation(params, self.options.rho)
        runner.keep(())
        if perturbation is not None:
            with torch.no_grad():
                for p, e in zip(params, perturbation, strict=True):
                    p.add_(e)
        reported = runner.backward("sdat")
        if perturbation is not None:
            with torch.no_grad():
                for p, e in zip(params, perturbation, strict=True):
                    p.sub_(e)
        runner.keep(PARTS)
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
        """Pass 1 (``sharpness``): the classification loss; pass 2 (``sdat``): it plus the alignment term."""
        cls_loss = source_loss(logits_s)
        if phase == "sharpness":
            return cls_loss, {"cls_loss": float(cls_loss.detach())}
        if phase != "sdat":
            raise ValueError(f"sdat has phases sharpness, sdat; got {phase!r}")
        transfer = self(f_s, f_t, logits_s, logits_t)
        metrics = {"cls_loss": float(cls_loss.detach()), "transfer_loss": float(transfer.detach()), **self.last_metrics}
        return cls_loss + weight * transfer, metrics

    def extra_repr(self) -> str:
        return f"rho={self.options.rho}, temperature={self.options.temperature}"
