"""Fine-tuning strategies: *what* to freeze (groups, patterns), *when* to unfreeze (callbacks),
and how fast each group learns (discriminative LR, layer-wise LR decay)."""

from hf_transfer.methods.finetune.groups import freeze_parameters, select_parameters
from hf_transfer.methods.finetune.lr import group_learning_rates, optimizer_groups_by_name
from hf_transfer.methods.finetune.unfreeze import GradualUnfreezing

__all__ = [
    "GradualUnfreezing",
    "freeze_parameters",
    "group_learning_rates",
    "optimizer_groups_by_name",
    "select_parameters",
]
