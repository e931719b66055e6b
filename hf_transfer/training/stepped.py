"""The Trainer's side of a method that owns its training step (:mod:`hf_transfer.methods.domain.step`).

:class:`TrainerStepRunner` carries out a method's passes inside one optimizer step of the Trainer's loop,
with the Trainer's own machinery, so that nothing of it is re-implemented per method:

* every pass runs all the micro-batches of the step (gradient accumulation, scaled ``1/k``), each
  through the DDP-wrapped model under the Trainer's autocast, with DDP's gradient sync on the last one;
* every intermediate update is clipped at ``max_grad_norm`` and taken by the Trainer's one optimizer (so
  its state, the scheduler's and the loss scaler's are the ones the Trainer checkpoints), on the gradients
  of the named parts only: a parameter without a gradient is skipped by every torch optimizer, momentum and
  weight decay included;
* the method's last update is left to the Trainer's own step (clip, step, schedule, zero, log).

The batches are augmented once (the fast input path's on-device augmentation), so every pass sees the
same images, as in the methods' reference code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_transfer.methods.domain.step import PARTS
from hf_transfer.training.modes.base import TransferModel

if TYPE_CHECKING:
    from transformers import Trainer


class TrainerStepRunner:
    """One optimizer step's passes for a stepped method (see the module docstring)."""

    def __init__(
        self, trainer: Trainer, model: nn.Module, batches: list[dict], parts: dict[str, list[nn.Parameter]]
    ) -> None:
        self.trainer = trainer
        self.model = model
        self.batches = batches
        self.parts = parts
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parameter parts {sorted(unknown)}; the parts are {PARTS}")
        #: every pass's mean loss and the method's numbers, prefixed by the pass: what the step logs
        self.metrics: dict[str, float] = {}

    def parameters(self, parts: Collection[str]) -> list[nn.Parameter]:
        """The trainable parameters of ``parts``."""
        return [p for part in parts for p in self.parts[part]]

    def backward(self, phase: str) -> torch.Tensor:
        """Forward every micro-batch with ``phase`` and back-propagate its loss; the mean loss, detached."""
        trainer, k = self.trainer, len(self.batches)
        total: torch.Tensor | None = None
        sums: dict[str, float] = {}
        for i, inputs in enumerate(self.batches):
            sync = contextlib.nullcontext() if i == k - 1 else trainer.accelerator.no_sync(self.model)
            with sync:
                with trainer.compute_loss_context_manager():
                    outputs = self.model(**inputs, phase=phase)
                loss = outputs["loss"] / k
                trainer.accelerator.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
            for name, value in outputs.get("metrics", {}).items():
                sums[name] = sums.get(name, 0.0) + float(value) / k
        assert total is not None
        self.metrics[f"{phase}_loss"] = float(total)
        self.metrics.update({f"{phase}_{name}": value for name, value in sums.items()})
        if "cls_loss" in sums:  # the classification part, for the run's divergence check: the first pass's
            self.metrics.setdefault("cls_loss", sums["cls_loss"])
        return total

    def _drop_grads_outside(self, parts: Collection[str]) -> None:
        kept = {id(p) for p in self.parameters(parts)}
        for part in PARTS:
            for p in self.parts.get(part, ()):
                if id(p) not in kept:
                    p.grad = None

    def update(self, parts: Collection[str]) -> None:
        """Clip the gradients of ``parts`` and step the optimizer on them alone; all gradients cleared after."""
        self._drop_grads_outside(parts)
        max_norm = self.trainer.args.max_grad_norm
        if max_norm and max_norm > 0:
            self.trainer.accelerator.clip_grad_norm_(self.parameters(parts), max_norm)
        optimizer = self.trainer.optimizer
        assert optimizer is not None, "the Trainer builds its optimizer before the first step"
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def keep(self, parts: Collection[str]) -> None:
        """Drop the gradients outside ``parts``: the Trainer's own optimizer step takes the rest."""
        self._drop_grads_outside(parts)


def prepared_batches(trainer: Trainer, model: TransferModel, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The step's micro-batches on the device, augmented once (see the module docstring)."""
    out = []
    with torch.no_grad(), trainer.compute_loss_context_manager():
        for inputs in batches:
            out.append(model.prepare_batch(trainer._prepare_inputs(inputs)))
    return out
