"""``hf-transfer train --help``: the project's options first, grouped by what they do; ``--help-all`` adds every
``TrainingArguments`` field (HfArgumentParser's own help, 800+ lines, is what ``--help-all`` prints)."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

#: TransferArguments fields by what they do (a test checks that every field is in exactly one group)
GROUPS: dict[str, tuple[str, ...]] = {
    "What to adapt": ("mode", "method", "method_args", "backbone", "backbone_revision", "trust_remote_code", "ranking"),
    "Data": (
        "target",
        "source",
        "image_column",
        "label_column",
        "label_names_column",
        "class_names",
        "label_policy",
        "target_classes",
        "max_train_samples",
        "max_eval_samples",
        "skip_bad_images",
        "streaming",
        "k_shot",
    ),
    "Preprocessing and input": (
        "image_size",
        "crop_pct",
        "augment",
        "input_path",
        "decoded_cache_dir",
        "decode_cache_format",
        "decode_cache_quality",
    ),
    "timm's training recipe (mode=task, domain)": (
        "aa",
        "reprob",
        "remode",
        "mixup",
        "cutmix",
        "mixup_prob",
        "mixup_switch_prob",
        "mixup_mode",
        "drop_path",
    ),
    "Fine-tuning (mode=task)": (
        "freeze",
        "backbone_lr_scale",
        "layer_decay",
        "unfreeze_every",
        "unfreeze_unit",
        "regularizer",
        "l2sp_alpha",
        "l2sp_beta",
        "bss_eta",
        "bss_k",
    ),
    "LoRA (mode=task method=lora)": ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "publish"),
    "Domain adaptation (mode=domain)": (
        "trade_off",
        "trade_off_schedule",
        "trade_off_warmup",
        "bottleneck_dim",
        "target_batch_ratio",
        "adabn",
        "checkpoint_selection",
        "partial_weighting",
        "pada_every",
    ),
    "Feature transfer (mode=feature)": (
        "head_solver",
        "feature_cache_dir",
        "feature_dtype",
        "feature_batch_size",
        "features_on_device",
    ),
    "Robust fine-tuning (EMA, WiSE-FT)": (
        "model_ema",
        "model_ema_decay",
        "model_ema_warmup",
        "wise_ft_alpha",
        "validation_fraction",
    ),
    "Speed": ("channels_last", "auto_bf16", "cpu_threads"),
    "Output folder and Hub": ("overwrite_output_dir", "hub_create_pr"),
}

#: the TrainingArguments a transfer run uses most, shown in the short help (every other one works too)
COMMON_TRAINER_OPTIONS = (
    "output_dir",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "optim",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
    "bf16",
    "eval_strategy",
    "save_strategy",
    "resume_from_checkpoint",
    "report_to",
    "push_to_hub",
    "hub_model_id",
    "use_cpu",
)

USAGE = "usage: hf-transfer train [--config FILE] --mode MODE --backbone ID --target DATASET [--option value ...]"


def _first_sentence(text: str) -> str:
    text = " ".join(str(text or "").split())
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def _option_line(field: dataclasses.Field, width: int = 100) -> str:
    default = field.default if field.default is not dataclasses.MISSING else None
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    head = f"  --{field.name}" + (f" (default: {default})" if default not in (None, "", [], {}) else "")
    body = field.metadata.get("help", "")
    return "\n".join(textwrap.wrap(f"{head}  {body}", width=width, subsequent_indent="        "))


def short_help(transfer_arguments: type) -> str:
    """The grouped help of ``hf-transfer train --help``.

    ``transfer_arguments``: the TransferArguments class, given by the config that defines it."""
    from transformers import TrainingArguments

    fields = {f.name: f for f in dataclasses.fields(transfer_arguments)}
    out = [
        USAGE,
        "",
        "Adapt a vision backbone (feature, domain or task mode) and write a Hub-ready folder. Options come from",
        "--config FILE (YAML/JSON), flags, or both (flags win); see docs/usage.md.",
    ]
    for group, names in GROUPS.items():
        out += ["", f"{group}:"] + [_option_line(fields[n]) for n in names]
    trainer_fields = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    out += ["", "Trainer (transformers.TrainingArguments; unset optimizer/schedule/batch/length: the mode's recipe):"]
    out += [f"  --{n}  {_first_sentence(trainer_fields[n].metadata.get('help', ''))}" for n in COMMON_TRAINER_OPTIONS]
    out += [
        "",
        "Every other TrainingArguments field is accepted too: hf-transfer train --help-all lists them all.",
        "--debug shows the traceback of an error; --verbose keeps every library log line.",
    ]
    return "\n".join(out)


def full_help(parser: argparse.ArgumentParser) -> str:
    """Every option, as the config's HfArgumentParser describes it, under the subcommand's name."""
    parser.prog = "hf-transfer train"
    return parser.format_help()
