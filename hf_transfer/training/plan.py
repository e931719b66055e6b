"""The checks a run makes before any work, and the plan they resolve (without downloading or training anything).

``hf-transfer plan --config recipes/configs/office31_dann.yaml`` checks what can be checked offline
(mode, method and its options, dataset specs, backbone id form and its weight files on this disk, label
policy, launch settings, report_to, the push target) and prints what the run would do, so a typo fails in a
second instead of after a download. ``train`` runs the same checks (:func:`plan_run`) before any work, so
the two refuse the same things. A recipe for
another machine (``--bf16 true`` planned on a CPU-only laptop) still resolves: what this machine lacks
is reported in the plan, not raised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import TrainingArguments

from hf_transfer.config import TransferArguments, check_training_arguments
from hf_transfer.config.checks import check_source_free_backbone
from hf_transfer.config.recipe import training_recipe
from hf_transfer.data.align import POLICIES
from hf_transfer.data.spec import parse_dataset_spec
from hf_transfer.data.transforms import AUGMENTATIONS
from hf_transfer.errors import TransferConfigError
from hf_transfer.models.backbones import check_backbone
from hf_transfer.training.checkpoint_selection import run_selection


def _method_plan(args: TransferArguments) -> dict[str, Any]:
    """The registered method (title, paper, options with their defaults) and the mode's shared options."""
    from hf_transfer.methods.registry import get_method

    assert args.method is not None, "TransferArguments.__post_init__ fills in the mode's default method"
    method = get_method(args.method, args.mode)
    assert not isinstance(args.method_args, str), "TransferArguments.__post_init__ parses the JSON into a dict"
    options = dataclasses.asdict(method.options(args.method_args))
    plan = {
        "title": method.title,
        "paper": method.paper,
        "options": options,
        "backbone_lr_scale": args.backbone_lr_scale,
    }
    if args.mode == "domain" and not method.needs.source_data:  # source-free: none of the source-side options
        assert method.implementation is not None, "every domain method registers the loss that carries it out"
        return {**plan, "loss": method.implementation.__name__, "source_free": True}
    if args.mode == "domain":
        assert method.implementation is not None, "every domain method registers the loss that carries it out"
        return {
            **plan,
            "loss": method.implementation.__name__,
            "trade_off": args.trade_off,
            "trade_off_schedule": args.trade_off_schedule,
            "bottleneck_dim": args.bottleneck_dim,
            "target_batch_ratio": args.target_batch_ratio,
            "partial_weighting": args.partial_weighting,
        }
    return {**plan, "freeze": args.freeze}


def plan_run(args: TransferArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """Everything the run would use, checked offline; raises TransferConfigError on the first problem."""
    check_training_arguments(args, training_args)
    backbone_kind = check_backbone(args.backbone, args.backbone_revision)
    check_source_free_backbone(args)  # a source-free method starts from a trained classifier
    if args.label_policy not in POLICIES:
        raise TransferConfigError(f"label_policy={args.label_policy!r}: choose one of {POLICIES}.")
    if args.augment not in AUGMENTATIONS:
        raise TransferConfigError(f"augment={args.augment!r}: choose one of {AUGMENTATIONS}.")
    datasets = {"target": parse_dataset_spec(args.target)}
    if args.source:
        datasets["source"] = parse_dataset_spec(args.source)
    ranking = None
    if args.ranking is not None:
        from hf_transfer.evaluation.ranking import ranking_summary

        ranking = ranking_summary(args.ranking, args.backbone, args.target)
    return {
        "mode": args.mode,
        "method": args.method,
        "method_plan": _method_plan(args),
        "backbone": {
            "id": args.backbone,
            "kind": backbone_kind,
            "revision": args.backbone_revision,
        },
        "datasets": {
            k: {"kind": v.kind, "name": v.name, "config": v.config, "revision": v.revision, "split": v.split}
            for k, v in datasets.items()
        },
        "label_policy": args.label_policy,
        "training_recipe": training_recipe(args, training_args),
        "target_classes": args.target_classes,
        "ranking": ranking,
        "training": {
            "output_dir": training_args.output_dir,
            "learning_rate": training_args.learning_rate,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "num_train_epochs": training_args.num_train_epochs,
            "max_steps": training_args.max_steps,
            "bf16": training_args.bf16,
            "fp16": training_args.fp16,
            "use_cpu": training_args.use_cpu,
            "seed": training_args.seed,
            # which weights the run keeps: the validator's pick among the evaluations (domain mode), else the last
            "checkpoint_selection": run_selection(args, training_args),
        },
    }
