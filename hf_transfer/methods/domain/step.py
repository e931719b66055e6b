"""Methods that own their training step: the contract between such a method and the Trainer.

Most methods hand the Trainer one loss per batch (:class:`~hf_transfer.methods.domain.base.TransferLoss`).
Some take several passes per batch, each updating a different part of the model: MCD's three steps, SAM's
two forward/backward passes. Such a method subclasses :class:`SteppedLoss` and writes :meth:`train_step`
against a :class:`StepRunner`, which the Trainer provides: the runner forwards every micro-batch of the
optimizer step through the (DDP-wrapped) model with a *phase* name, back-propagates under mixed precision
and gradient accumulation, and steps the one optimizer on the gradients of named *parts* only. The mode
computes a phase's loss by calling :meth:`SteppedLoss.phase_loss` with the batch's features and logits.

Parts (the parameters a phase may update): ``features`` (the backbone below its classifier, and a
bottleneck's layers), ``classifier`` (the layer that maps features to logits), ``method`` (the method's own
modules, e.g. MCD's second classifier or a domain discriminator).

A method's state lives in its modules' parameters and persistent buffers, so the Trainer's checkpoint
carries it and resume is exact; schedules are pure functions of the training progress, as for every loss.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol

import torch
from torch import nn

from hf_transfer.methods.domain.base import TransferLoss

FEATURES, CLASSIFIER, METHOD = "features", "classifier", "method"
PARTS = (FEATURES, CLASSIFIER, METHOD)


class StepRunner(Protocol):
    """What the Trainer offers a method during one optimizer step (see the module docstring)."""

    def backward(self, phase: str) -> torch.Tensor:
        """Forward every micro-batch with ``phase`` and back-propagate its loss; the mean loss, detached."""
        ...

    def update(self, parts: Collection[str]) -> None:
        """Clip the gradients of ``parts`` and step the optimizer on them alone; all gradients cleared after."""
        ...

    def keep(self, parts: Collection[str]) -> None:
        """Drop the gradients outside ``parts``: the Trainer's own optimizer step takes the rest."""
        ...

    def parameters(self, parts: Collection[str]) -> list[nn.Parameter]:
        """The trainable parameters of ``parts``."""
        ...


class SteppedLoss(TransferLoss):
    """A domain method that owns its training step (see the module docstring).

    ``forward`` still returns the method's alignment term (the loss the method's last phase minimises), so
    the method can be scored and tested like any loss; training goes through :meth:`train_step`.
    """

    #: phases whose forward needs no gradient below the classifier: the mode computes their features under
    #: ``torch.no_grad`` (the backbone's backward is skipped, and DDP must allow unused parameters)
    frozen_feature_phases: frozenset[str] = frozenset()

    def train_step(self, runner: StepRunner) -> torch.Tensor:  # pragma: no cover - abstract
        """Run this method's passes for one optimizer step, leaving the last update to the Trainer.

        Returns the loss the step reports as its training loss (detached)."""
        raise NotImplementedError

    def phase_loss(  # pragma: no cover - abstract
        self,
        phase: str,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor,
        logits_t: torch.Tensor,
        source_loss: Callable[[torch.Tensor], torch.Tensor],
        weight: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``phase`` on one batch, and the numbers to log.

        ``source_loss(logits)`` is the mode's classification loss of the source rows (label smoothing and
        class weights applied); ``weight`` is the mode's trade-off weight now."""
        raise NotImplementedError
