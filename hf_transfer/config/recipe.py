"""timm's recipe options as a run records them: one reading for ``plan``, results.json and the model card."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from hf_transfer.config.arguments import TransferArguments


def training_recipe(args: TransferArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The timm-recipe options that acted in the run (policy, erasing, mixing, drop-path, label smoothing)."""
    out: dict[str, Any] = {}
    if args.aa:
        out["aa"] = args.aa
    if args.reprob > 0:
        out.update(reprob=args.reprob, remode=args.remode)
    if args.mixup > 0 or args.cutmix > 0:
        out.update(mixup=args.mixup, cutmix=args.cutmix, mixup_prob=args.mixup_prob, mixup_mode=args.mixup_mode)
        if args.mixup > 0 and args.cutmix > 0:
            out["mixup_switch_prob"] = args.mixup_switch_prob
        out["soft_targets"] = True
    if args.drop_path is not None:
        out["drop_path"] = args.drop_path
    if training_args.label_smoothing_factor:
        out["label_smoothing"] = training_args.label_smoothing_factor
    return out
