"""The contract between domain-adaptation losses and the Trainer.

A :class:`TransferLoss` is an alignment term computed on one paired batch of source and target
features (and, for methods that need them, classifier logits). The Trainer adds it to the source
classification loss with a trade-off weight that the Trainer owns and schedules; the loss itself
only owns schedules that the method defines (e.g. the gradient-reversal coefficient of DANN).

This package is a lower layer: nothing here imports anything else from ``hf_transfer`` but the
method registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hf_transfer.methods.domain.grl import grad_reverse, grl_coefficient
from hf_transfer.methods.registry import NoOptions


class TransferLoss(nn.Module):
    """An alignment term over one (source, target) batch.

    Subclasses implement ``forward(f_s, f_t, logits_s=None, logits_t=None) -> scalar tensor``; those
    with ``uses_source_weight`` also take ``source_weight=`` (per-sample weights of the source rows).

    * ``paper``: link to the method's paper (set by :func:`~hf_transfer.methods.domain.registry.register_loss`).
    * ``options``: the method's options, an instance of its registered config dataclass built from
      the constructor's keyword arguments (the dataclass holds the defaults and the help texts).
    * ``set_progress(p)``: training progress ``p = global_step / max_steps`` in [0, 1], set by the
      Trainer before every step. Every schedule of a loss is a pure function of ``self.progress``
      (no internal step counter), so restoring a checkpoint and setting the progress restores it.
    * ``last_metrics``: floats worth logging from the latest ``forward`` (e.g. discriminator
      accuracy, GRL coefficient, fraction of pseudo-labelled samples).
    * ``classifier_input(features)``: with ``changes_classifier_input``, what the classifier sees in place
      of the features while training (AFN's dropout); the loss then receives those features too.

    Learnable parts (e.g. a domain discriminator) are sub-modules, so ``loss.parameters()`` must be
    given to the optimizer (and the module moved to the device and switched with train/eval).
    """

    paper: str = ""
    options_type: type = NoOptions
    #: True when ``forward`` takes ``source_weight=`` (per-sample weights of the source rows, e.g.
    #: PADA's class weights on the source side of a domain loss)
    uses_source_weight: bool = False
    #: 2 when the method needs a second view of the target batch (e.g. FixMatch's strong view): the
    #: caller then builds it with ``second_view(target_pixels)``, runs it in the same forward, and
    #: passes ``f_t`` / ``logits_t`` with the first view's rows followed by the second view's rows
    target_views: int = 1
    #: True when the method changes the classifier's input while training (:meth:`classifier_input`, e.g. AFN's
    #: dropout): the mode then passes the pooled (or bottleneck) features through it before the classifier
    changes_classifier_input: bool = False

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = self.options_type(**options)
        self.progress: float = 0.0
        self.last_metrics: dict[str, float] = {}

    def second_view(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The second target view of a (normalised) target batch; only for ``target_views == 2``."""
        raise NotImplementedError(f"{type(self).__name__} has target_views={self.target_views}")

    def classifier_input(self, features: torch.Tensor) -> torch.Tensor:
        """The features the classifier and this loss see, from the pooled (or bottleneck) ones; the identity here."""
        return features

    def set_progress(self, progress: float) -> None:
        """Set the training progress in [0, 1] (``global_step / max_steps``)."""
        progress = float(progress)
        if not math.isfinite(progress) or progress < 0.0 or progress > 1.0 + 1e-6:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.progress = min(progress, 1.0)

    def forward(  # pragma: no cover - abstract
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"progress={self.progress:.4f}"


@dataclass(frozen=True)
class GRLOptions:
    """The gradient-reversal schedule every adversarial method takes (see :func:`grl_coefficient`)."""

    alpha: float = field(
        default=10.0,
        metadata={
            "help": "Steepness of the GRL coefficient ramp hi * (2 / (1 + exp(-alpha * q)) - 1) over progress q."
        },
    )
    hi: float = field(default=1.0, metadata={"help": "Final GRL coefficient."})
    hold: float = field(
        default=0.15,
        metadata={
            "help": "GRL coefficient held at 0 for this first fraction of training (0: the paper's ramp from step 0)."
        },
    )


class AdversarialLoss(TransferLoss):
    """A loss trained adversarially through a gradient reversal layer (DANN, CDAN, MDD).

    Owns the reversal coefficient's schedule (:func:`grl_coefficient` of the training progress with
    the options ``alpha``, ``hi`` and ``hold``, which every adversarial config declares): the modules
    behind :meth:`reverse` minimise the loss, the features in front of it maximise it.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        alpha, hi, hold = self.options.alpha, self.options.hi, self.options.hold
        grl_coefficient(0.0, alpha=alpha, hi=hi, hold=hold)  # validate early
        self.alpha, self.hi, self.hold = float(alpha), float(hi), float(hold)

    @property
    def coefficient(self) -> float:
        """Current gradient-reversal coefficient (a pure function of ``self.progress``)."""
        return grl_coefficient(self.progress, alpha=self.alpha, hi=self.hi, hold=self.hold)

    def reverse(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``x`` through the gradient reversal layer at the current coefficient, and that coefficient."""
        coeff = self.coefficient
        return grad_reverse(x, coeff), coeff

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, hi={self.hi}, hold={self.hold}, progress={self.progress:.4f}"


def require_logits(name: str, logits: torch.Tensor | None) -> torch.Tensor:
    """``logits``, or a clear error when a method that needs classifier logits was called without them."""
    if logits is None:
        raise ValueError(f"{name} needs classifier logits; got None")
    return logits


def entropy(probs: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Shannon entropy (nats) of probability vectors along ``dim``."""
    return -(probs * torch.log(probs + eps)).sum(dim=dim)


def _atleast_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 to float32 (softmax/entropy/log terms); keep float64 as is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
