"""Recipe defaults: the optimizer, learning rate, batch, schedule and length a run uses when the user sets none.

``TrainingArguments``' own defaults (AdamW at 5e-5, batch 8, 3 epochs, no warm-up) are tuned for fine-tuning
language models; on a small image folder they left a fine-tuned backbone below its zero-shot accuracy (46.7%
against 83.3% on a 3-class folder, where the recipe below reaches 96.7%). Each mode therefore has a recipe, and a
method may declare its own on top (its registration's ``recipe``, e.g. LoRA's higher learning rate). They were
picked from the sweep in ``benchmarks/defaults_sweep.py`` (``benchmarks/results/defaults.md``).

The rule for what the user gave (from the command line, a config file or a dict): every key the user sets wins;
the optimizer and its schedule (``learning_rate``, ``weight_decay``, ``optim_args``, ``lr_scheduler_type``,
``warmup_steps``) come from the recipe only when the user kept the recipe's optimizer (did not set ``optim``),
because a learning rate tuned for AdamW is wrong for SGD; the length (``num_train_epochs``) only when neither
``max_steps`` nor ``num_train_epochs`` is set. Runs built from ``TrainingArguments`` objects in Python get no
recipe: the object already holds every value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: the keys a recipe may set (``TrainingArguments`` fields)
RECIPE_KEYS = (
    "optim",
    "optim_args",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "per_device_train_batch_size",
    "num_train_epochs",
)
#: what comes with the recipe's optimizer: a user who picks their own optimizer gets none of these from it
_OPTIMIZER_KEYS = ("optim", "optim_args", "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps")
_LENGTH_KEYS = ("max_steps", "num_train_epochs")

_ADAMW = {"optim": "adamw_torch_fused", "weight_decay": 0.05, "lr_scheduler_type": "cosine", "warmup_steps": 0.05}

#: per mode: what a run of that mode uses unless the user or the method says otherwise
MODE_RECIPES: dict[str, dict[str, Any]] = {
    # a new head on a pretrained backbone
    "task": {**_ADAMW, "learning_rate": 1e-3, "per_device_train_batch_size": 32, "num_train_epochs": 30},
    # a linear head on cached features: cheap epochs, so many of them
    "feature": {
        **_ADAMW,
        "learning_rate": 1e-2,
        "weight_decay": 1e-4,
        "per_device_train_batch_size": 64,
        "num_train_epochs": 100,
    },
    # the domain-adaptation benchmark's measured setting (benchmarks/domain_adaptation.py: 600 steps of batch 64 on
    # the 10,000 printed digits, about 4 epochs), the SGD recipe of the alignment methods' papers and of TLlib
    "domain": {
        "optim": "sgd",
        "optim_args": "momentum=0.9,nesterov=True",
        "learning_rate": 0.02,
        "weight_decay": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "per_device_train_batch_size": 64,
        "num_train_epochs": 4,
    },
}


def recipe_for(mode: str, method_recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mode's recipe with the method's declared overrides on top."""
    return {**MODE_RECIPES.get(mode, {}), **dict(method_recipe or {})}


def defaults_to_apply(recipe: Mapping[str, Any], given: Iterable[str]) -> dict[str, Any]:
    """The recipe's values for the keys the user did not set, by the rule in the module docstring."""
    given = set(given)
    own_optimizer = "optim" in given
    out = {}
    for key, value in recipe.items():
        if key in given or (own_optimizer and key in _OPTIMIZER_KEYS):
            continue
        if key == "num_train_epochs" and not given.isdisjoint(_LENGTH_KEYS):
            continue
        out[key] = value
    return out
