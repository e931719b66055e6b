"""*When* to unfreeze: gradual unfreezing as a ``TrainerCallback`` that survives resume.

Groups are unfrozen one at a time from the head backwards (ULMFiT / fastai ``freeze_to``): with
``every = E`` (steps or epochs) the head trains from step 0, the group just before it from step
``E``, the next from ``2E``, and so on. *What* may be unfrozen is decided elsewhere (groups frozen
for good by ``freeze`` are never in the schedule).

Resume-safe by construction:

- every parameter of the schedule is in the optimizer from the start (the mode builds its groups
  that way), so the optimizer's parameter groups, their learning rates and its saved state have the
  same structure whether or not a group is unfrozen yet, and ``resume_from_checkpoint`` restores
  them exactly;
- which groups train is a pure function of ``state.global_step`` (restored by the Trainer), applied
  on ``on_train_begin`` and before every optimisation step; a parameter that is frozen has no
  gradient, so the optimizer skips it (no weight decay, no momentum): it stays bit-identical.

Under DDP a parameter's ``requires_grad`` must not change after the model is wrapped, so with
``mask=True`` (the mode sets it when ``world_size > 1``) every parameter keeps ``requires_grad``
and frozen ones get a zero gradient (synchronised like any other, so gradient clipping sees the
true norm) that is dropped (``grad = None``) right before the optimizer step.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sized
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)

UNITS = ("steps", "epochs")


class GradualUnfreezing(TrainerCallback):
    """Unfreeze ``groups`` (ordered from the head backwards) one every ``every`` steps/epochs."""

    def __init__(
        self,
        groups: OrderedDict[str, list[tuple[str, torch.nn.Parameter]]],
        every: float,
        unit: str = "steps",
        mask: bool = False,
    ) -> None:
        if unit not in UNITS:
            raise TransferConfigError(f"unfreeze_unit={unit!r}: choose one of {UNITS}.")
        if not every or every <= 0:
            raise TransferConfigError(f"unfreeze_every={every!r}: must be > 0.")
        if not groups:
            raise TransferConfigError("gradual unfreezing: no backbone group left to unfreeze.")
        self.groups = OrderedDict(groups)
        self.every, self.unit, self.mask = float(every), unit, mask
        self.steps_per_epoch: int | None = None
        self.attached = False
        self._frozen: set[int] = set()
        self._count: int | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        if mask:
            for params in self.groups.values():
                for _, p in params:
                    self._hooks.append(p.register_hook(self._mask_hook(p)))

    # --- the schedule: a pure function of the optimisation step ----------------------------------
    def interval_steps(self) -> int:
        """Optimisation steps between two unfreezings (``every`` epochs converted once the epoch length is known)."""
        if self.unit == "steps":
            return max(1, int(round(self.every)))
        if self.steps_per_epoch is None:
            raise RuntimeError("epochs schedule used before the number of steps per epoch is known.")
        return max(1, int(round(self.every * self.steps_per_epoch)))

    def unfrozen_count(self, step: int) -> int:
        """How many scheduled groups train at ``step``."""
        return min(len(self.groups), step // self.interval_steps())

    def trainable_groups(self, step: int) -> list[str]:
        """Names of the scheduled groups that train at ``step`` (the head is not in the schedule)."""
        return list(self.groups)[: self.unfrozen_count(step)]

    def unfreeze_steps(self) -> dict[str, int]:
        """The step at which each group starts training."""
        k = self.interval_steps()
        return {name: (i + 1) * k for i, name in enumerate(self.groups)}

    def apply(self, step: int) -> None:
        """Freeze and unfreeze the groups as the schedule says for ``step`` (idempotent, so a resume lands right)."""
        count = self.unfrozen_count(step)
        self._frozen = set()
        for i, params in enumerate(self.groups.values()):
            trainable = i < count
            for _, p in params:
                if self.mask:
                    if not trainable:
                        self._frozen.add(id(p))
                else:
                    p.requires_grad_(trainable)
        if count != self._count:
            logger.info("step %d: gradual unfreezing, training %s", step, self.trainable_groups(step) or "head only")
            self._count = count

    def frozen_parameter_ids(self) -> set[int]:
        """The ids of the parameters the schedule holds frozen now (both ways: requires_grad or mask)."""
        if self.mask:
            return set(self._frozen)
        return {id(p) for params in self.groups.values() for _, p in params if not p.requires_grad}

    def _mask_hook(self, p: torch.nn.Parameter) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda grad: torch.zeros_like(grad) if id(p) in self._frozen else grad

    # --- TrainerCallback events ------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        train_dataloader: Sized | None = None,
        **kwargs: Any,
    ) -> None:
        if self.unit == "epochs":
            if train_dataloader is not None:
                self.steps_per_epoch = max(1, len(train_dataloader) // max(1, args.gradient_accumulation_steps))
            else:
                self.steps_per_epoch = max(1, math.ceil(state.max_steps / max(1, state.num_train_epochs)))
        self.attached = True
        self.apply(state.global_step)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.apply(state.global_step)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.mask:
            for params in self.groups.values():
                for _, p in params:
                    if id(p) in self._frozen:
                        p.grad = None
