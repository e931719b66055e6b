"""Fine-tuning strategies: *what* to freeze (groups, patterns), *when* to unfreeze (callbacks),
and how fast each group learns (discriminative LR, layer-wise LR decay)."""

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_transfer.methods.finetune.groups import (
    count_parameters,
    freeze_parameters,
    resolve_frozen_groups,
    select_parameters,
)
from hf_transfer.methods.finetune.lr import group_learning_rates, optimizer_groups_by_name
from hf_transfer.methods.finetune.unfreeze import GradualUnfreezing


class ModeCallbacks(TrainerCallback):
    """Forwards every Trainer event to the mode's own callbacks (``mode.callbacks()``).

    For code that builds the Trainer before the mode exists (``run_transfer(..., callbacks=[ModeCallbacks()])``);
    the mode is found through the trained ``TransferModel``. Harmless when the mode's callbacks are
    also attached directly (they are idempotent functions of ``state.global_step``). One forwarding
    method per ``TrainerCallback`` event is defined below the class.
    """

    @staticmethod
    def _targets(kwargs: dict[str, Any]) -> list[TrainerCallback]:
        mode = getattr(kwargs.get("model"), "_mode", None)
        return mode.callbacks() if mode is not None else []


def _forward_event(event: str) -> Callable[..., TrainerControl]:
    def forward(
        self: ModeCallbacks, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        for cb in self._targets(kwargs):
            getattr(cb, event)(args, state, control, **kwargs)
        return control

    forward.__name__ = event
    return forward


for _event in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
    setattr(ModeCallbacks, _event, _forward_event(_event))


__all__ = [
    "GradualUnfreezing",
    "ModeCallbacks",
    "count_parameters",
    "freeze_parameters",
    "group_learning_rates",
    "optimizer_groups_by_name",
    "resolve_frozen_groups",
    "select_parameters",
]
