"""Fine-tuning strategies: *what* to freeze (groups, patterns), *when* to unfreeze (callbacks),
and how fast each group learns (discriminative LR, layer-wise LR decay)."""

from transformers import TrainerCallback

from hf_transfer.methods.finetune.groups import count_parameters, freeze_parameters, resolve_frozen_groups, select_parameters
from hf_transfer.methods.finetune.lr import group_learning_rates, optimizer_groups_by_name
from hf_transfer.methods.finetune.unfreeze import GradualUnfreezing


class ModeCallbacks(TrainerCallback):
    """Forwards every Trainer event to the mode's own callbacks (``mode.callbacks()``).

    For code that builds the Trainer before the mode exists (``run_transfer(..., callbacks=[ModeCallbacks()])``);
    the mode is found through the trained ``TransferModel``. Harmless when the mode's callbacks are
    also attached directly (they are idempotent functions of ``state.global_step``).
    """

    def _targets(self, kwargs):
        model = kwargs.get("model")
        mode = getattr(model, "_mode", None)
        return mode.callbacks() if mode is not None and hasattr(mode, "callbacks") else []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def forward(args, state, control, **kwargs):
                for cb in object.__getattribute__(self, "_targets")(kwargs):
                    if hasattr(cb, name):
                        getattr(cb, name)(args, state, control, **kwargs)
                return control
            return forward
        return object.__getattribute__(self, name)


__all__ = ["GradualUnfreezing", "ModeCallbacks", "count_parameters", "freeze_parameters", "group_learning_rates",
           "optimizer_groups_by_name", "resolve_frozen_groups", "select_parameters"]
