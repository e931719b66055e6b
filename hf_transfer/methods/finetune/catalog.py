"""The task and feature methods' registrations (:mod:`hf_transfer.methods.registry`).

Their options are TransferArguments fields of their own (``freeze``, ``lora_*``, ...), not
``method_args``; what each does lives in :mod:`hf_transfer.training.modes.task` and ``feature``; where
each such option acts is declared in :mod:`hf_transfer.methods.options` from the properties below. They
train with a cross-entropy on the target's labels, which takes class probabilities too (``soft_targets``).
"""

from hf_transfer.methods.registry import Needs, register_method

#: every task/feature method trains on the labelled target
_FINE_TUNES = Needs(target_labels=True, trainable_backbone=True)
_FROZEN = Needs(target_labels=True, trainable_backbone=False)

register_method(
    "full",
    title="Full fine-tuning",
    paper="https://arxiv.org/abs/1411.1792",
    modes=("task",),
    default_for=("task",),
    description="Every layer is trained.",
    needs=_FINE_TUNES,
    soft_targets=True,
)
register_method(
    "partial",
    title="Partial fine-tuning",
    paper="https://arxiv.org/abs/1411.1792",
    modes=("task",),
    description="The listed early parameter groups stay frozen; the rest is trained.",
    needs=_FINE_TUNES,
    soft_targets=True,
    required_options=("freeze",),
)
register_method(
    "linear",
    title="Linear probe",
    paper="https://arxiv.org/abs/1805.08974",
    modes=("task", "feature"),
    default_for=("feature",),
    description="Only the classification head is trained on frozen features.",
    needs=_FROZEN,
    soft_targets=True,
)
register_method(
    "lora",
    title="LoRA adapters",
    paper="https://arxiv.org/abs/2106.09685",
    modes=("task",),
    description="Low-rank adapters on the attention/projection layers and the head are trained; "
    "the backbone's weights stay frozen.",
    # adapters start at zero and train few weights: they need a higher rate than full fine-tuning
    # (benchmarks/results/defaults.md: 1e-3 stayed 17 points below on the 3-class folder)
    recipe={"learning_rate": 5e-3},
    needs=_FROZEN,
    adapters=True,
    soft_targets=True,
)
