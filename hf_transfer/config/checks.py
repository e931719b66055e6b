"""Every check of the run's arguments that reads the method registry, in one place, before anything loads.

Where an option acts is not written here per method: each shared option declares the modes and method
properties it needs (:mod:`hf_transfer.methods.options`), each method its properties
(:class:`~hf_transfer.methods.registry.Needs`, ``adapters``, ``required_options``); this module refuses an
option set away from its default where that declaration excludes the run's method, naming the option and
what it needs. :data:`ARGUMENT_CONDITIONS` adds what depends on other arguments (``trade_off_warmup`` acts
only with ``trade_off_schedule=linear``, ...). The backbone needs of an option (``adabn``: BatchNorm) are
checked by :func:`check_backbone_needs` once the architecture is known (from its config, before the
weights and the data load).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hf_transfer.errors import TransferConfigError
from hf_transfer.methods import registry
from hf_transfer.methods.registry import Method

if TYPE_CHECKING:
    from torch import nn
    from transformers import TrainingArguments

#: a :class:`~hf_transfer.config.arguments.TransferArguments` (that module imports this one, so the checks
#: cannot name its class without an import cycle)
TransferArgs = Any

TRADE_OFF_SCHEDULES = ("constant", "dann", "linear")
HEAD_SOLVERS = ("sgd", "lbfgs")
PARTIAL_WEIGHTINGS = ("none", "exclude", "pada")
#: --checkpoint_selection: auto, last, or an unsupervised validator (hf_transfer.evaluation.validators.VALIDATORS)
CHECKPOINT_SELECTIONS = ("auto", "last", "im", "snd", "entropy")


def _loads_weights(backbone: str) -> bool:
    """A Hub id or a folder, as :func:`hf_transfer.models.backbones.load_backbone` tells them from timm names."""
    return not backbone.startswith("timm:") and ("/" in backbone or os.path.exists(backbone))


#: conditions on OTHER arguments under which an option acts: (predicate on the arguments, what it needs)
ARGUMENT_CONDITIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "method_args": (
        lambda a: bool(registry.get_method(a.method).option_fields()),
        "a method with options of its own (domain methods; task and feature methods take none)",
    ),
    "trade_off_warmup": (lambda a: a.trade_off_schedule == "linear", "trade_off_schedule=linear"),
    "pada_every": (lambda a: a.partial_weighting == "pada", "partial_weighting=pada"),
    "unfreeze_unit": (lambda a: a.unfreeze_every is not None, "unfreeze_every"),
    "l2sp_alpha": (lambda a: a.regularizer == "l2sp", "regularizer=l2sp"),
    "l2sp_beta": (lambda a: a.regularizer == "l2sp", "regularizer=l2sp"),
    "bss_eta": (lambda a: a.regularizer == "bss", "regularizer=bss"),
    "bss_k": (lambda a: a.regularizer == "bss", "regularizer=bss"),
    "decoded_cache_dir": (lambda a: a.input_path == "fast", "input_path=fast"),
    "aa": (lambda a: a.augment != "none", "augment=standard or light (augment=none trains on un-augmented images)"),
    "reprob": (lambda a: a.augment != "none", "augment=standard or light (augment=none trains on un-augmented images)"),
    "remode": (lambda a: a.reprob > 0, "reprob > 0 (random erasing on)"),
    "mixup_prob": (lambda a: a.mixup > 0 or a.cutmix > 0, "mixup > 0 or cutmix > 0"),
    "mixup_mode": (lambda a: a.mixup > 0 or a.cutmix > 0, "mixup > 0 or cutmix > 0"),
    "mixup_switch_prob": (lambda a: a.mixup > 0 and a.cutmix > 0, "both mixup > 0 and cutmix > 0"),
    "model_ema_decay": (lambda a: a.model_ema, "model_ema=true"),
    "model_ema_warmup": (lambda a: a.model_ema, "model_ema=true"),
    "validation_fraction": (
        lambda a: a.model_ema or a.wise_ft_alpha is not None,
        "model_ema=true or wise_ft_alpha (what the validation split chooses)",
    ),
    "decode_cache_format": (lambda a: a.input_path == "fast", "input_path=fast"),
    "decode_cache_quality": (
        lambda a: a.input_path == "fast" and a.decode_cache_format != "raw",
        "input_path=fast and decode_cache_format=jpeg or auto",
    ),
    "label_policy": (lambda a: a.source is not None, "a --source to align with the target"),
    "class_names": (lambda a: a.streaming, "streaming=true (a map-style dataset's classes come from its rows)"),
    "backbone_revision": (
        lambda a: _loads_weights(a.backbone),
        "a backbone from the Hub or a folder (a timm architecture name starts from random init)",
    ),
    "trust_remote_code": (
        lambda a: _loads_weights(a.backbone),
        "a backbone from the Hub or a folder (a timm architecture name runs no remote code)",
    ),
}


def check_arguments(args: TransferArgs, method: Method) -> None:
    """All checks of a built ``TransferArguments`` against its ``method`` (called by its ``__post_init__``)."""
    if method.needs.source_data and not args.source:
        raise TransferConfigError(f"mode={args.mode} method={method.name} needs --source (the labelled source domain).")
    if args.mode == "domain" and not method.needs.source_data and args.source:
        raise TransferConfigError(
            f"source={args.source!r}: method={method.name} is source-free (it adapts the trained classifier --backbone "
            "to the target without any source data). Remove --source, or choose a method that trains on a labelled "
            "source (e.g. dann)."
        )
    _check_values(args)
    labelled = method.needs.source_data or method.needs.target_labels  # without labelled rows: nothing to mix
    for producer in ("mixup", "cutmix"):
        if getattr(args, producer) > 0 and args.mode in method.modes and labelled:
            check_soft_targets(method, f"{producer}={getattr(args, producer)}")
    check_options_act(args, method)
    check_streaming(args)
    method.options(args.method_args)


#: options (``name``, or ``name=value`` for one value) that need a map-style pass over a training split, with why
#: (refused with --streaming)
STREAMING_REFUSED: dict[str, str] = {
    "k_shot": "it picks k images per class from the whole training split",
    "target_classes": "it selects classes from the whole training split",
    "max_train_samples": "it draws a seeded subset of the whole training split (max_steps bounds a stream)",
    "label_names_column": "class names from a column need the whole split; store the labels as a ClassLabel",
    "skip_bad_images": "bad images are found by decoding the whole split before training",
    "model_ema": "its validation split is held out of the whole training split",
    "wise_ft_alpha": "its validation split is held out of the whole training split",
    "adabn": "AdaBN re-estimates the BatchNorm statistics over the whole target training split after training",
    "partial_weighting=pada": "PADA re-estimates its class weights from predictions over the whole target training "
    "split every pada_every steps (partial_weighting=exclude works on a stream)",
}


def _streaming_refusal(args: TransferArgs) -> tuple[str, Any, str] | None:
    """The first option set that :data:`STREAMING_REFUSED` refuses: (name, value, why), or None."""
    for key, why in STREAMING_REFUSED.items():
        name, _, refused_value = key.partition("=")
        value = getattr(args, name)
        if (value == refused_value) if refused_value else value not in (None, False, 0, "", []):
            return name, value, why
    return None


def check_streaming(args: TransferArgs) -> None:
    """Refuse ``--streaming`` with what needs a whole training split at hand, naming the option."""
    if not args.streaming:
        return
    refused = _streaming_refusal(args)
    if refused is not None:
        name, value, why = refused
        raise TransferConfigError(
            f"{name}={value!r} does not work with --streaming true: {why}. Remove {name}, or run without --streaming."
        )
    if args.input_path != "fast":
        raise TransferConfigError(
            f"input_path={args.input_path!r} does not work with --streaming true: streamed images are decoded to the "
            "fast path's uint8 storage and augmented on the device. Remove --input_path."
        )
    if args.source and args.mode != "domain":
        raise TransferConfigError(
            f"source={args.source!r} does not work with --streaming true in mode={args.mode}: it streams one domain "
            "(mode=domain streams both). Remove --source."
        )


#: how to get what a source-free method starts from
SOURCE_FREE_FIX = (
    "Train one on the source first (`hf-transfer train --mode domain --method source_only --source SOURCE "
    "--target TARGET --output_dir DIR`) and pass DIR as --backbone, or give a Hub classifier whose config.json has "
    "id2label with class names"
)


def source_free_classifier_problem(args: TransferArgs) -> str | None:
    """Why ``--backbone`` cannot start a source-free run (no trained classifier with class names), or None.

    Read from its config on this disk only (a folder, or Hub files already cached); a Hub id not cached yet is
    checked once loaded (:func:`check_source_free_backbone`)."""
    from hf_transfer.models.backbones import RANDOM_INIT, backbone_kind

    if backbone_kind(args.backbone) == RANDOM_INIT:
        return f"backbone {args.backbone!r} is a timm architecture with random init: it has no trained classifier"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            args.backbone.removeprefix("hf-hub:"),
            revision=args.backbone_revision,
            trust_remote_code=args.trust_remote_code,
            local_files_only=True,
        )
    except Exception:  # not on this disk yet: checked when loaded
        return None
    return _label_names_problem(args.backbone, list((getattr(config, "id2label", None) or {}).values()))


def _label_names_problem(backbone: str, names: list[str]) -> str | None:
    if not names or all(str(n).startswith("LABEL_") for n in names):
        return (
            f"backbone {backbone!r} has no classifier with class names (its config has no id2label, or only "
            "LABEL_i placeholders)"
        )
    return None


def _refuse_source_free(method: str, problem: str) -> None:
    raise TransferConfigError(
        f"method={method} is source-free: it adapts a trained classifier to the target, and {problem}. "
        f"{SOURCE_FREE_FIX}."
    )


def check_source_free_backbone(args: TransferArgs, names: list[str] | None = None, has_head: bool = True) -> None:
    """Refuse a source-free method whose ``--backbone`` is no trained classifier, naming the fix.

    Without ``names``: from its config on this disk (before anything loads); with ``names`` (the loaded model's class
    names) and ``has_head`` (its classifier's weights came from the checkpoint): on the loaded model."""
    method = registry.get_method(args.method, args.mode)
    if method.needs.source_data or args.mode != "domain":
        return
    problem = source_free_classifier_problem(args) if names is None else _label_names_problem(args.backbone, names)
    if problem is None and not has_head:
        problem = f"backbone {args.backbone!r} holds no classifier weights"
    if problem is not None:
        _refuse_source_free(method.name, problem)


def check_required_options(args: TransferArgs) -> None:
    """Refuse a run without the options its method cannot run without (``partial``: ``freeze``).

    Checked on what the user gave (not in ``__post_init__``: a run's default arguments are built without them to
    tell what was given)."""
    method = registry.get_method(args.method, args.mode)
    for name in method.required_options:
        if not getattr(args, name):
            raise TransferConfigError(f"mode={args.mode} method={method.name} needs --{name}.")


def _is_unset(args: TransferArgs, name: str, default: Any, method: Method) -> bool:
    value = getattr(args, name)
    if name == "backbone_lr_scale":  # None, or the method's own LR rule written out
        return value in (None, method.backbone_lr_scale)
    return value == default or (default is None and value == {})


def check_options_act(args: TransferArgs, method: Method) -> None:
    """Refuse an option set where it has no effect (its declared scope, :data:`ARGUMENT_CONDITIONS`), naming it."""
    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    for name, default in defaults.items():
        if _is_unset(args, name, default, method):
            continue
        value = getattr(args, name)
        scope = registry.option_scope(name, value)
        if scope is not None and args.mode not in scope.modes:
            raise TransferConfigError(
                f"{name}={value!r}: {name} applies to mode={' or '.join(scope.modes)} only (mode={args.mode!r}); "
                "remove it."
            )
        if scope is not None and not scope.applies_to(method, args.mode):
            _refuse(args, name, value, scope.describe())
        acts, needs = ARGUMENT_CONDITIONS.get(name, (None, ""))
        if acts is not None and not acts(args):
            _refuse(args, name, value, needs)


def _refuse(args: TransferArgs, name: str, value: Any, needs: str) -> None:
    raise TransferConfigError(
        f"{name}={value!r} has no effect with mode={args.mode} method={args.method}: it acts only with {needs}. "
        "Remove it."
    )


def _check_values(args: TransferArgs) -> None:
    """The values of the options every run checks, whatever its mode."""
    from hf_transfer.data.decoded import check_storage_format
    from hf_transfer.methods.feature.cache import check_feature_dtype
    from hf_transfer.models.adapters import PUBLISH_FORMS

    check_feature_dtype(args.feature_dtype)
    check_storage_format(args.decode_cache_format, args.decode_cache_quality)

    if args.checkpoint_selection not in CHECKPOINT_SELECTIONS:
        raise TransferConfigError(
            f"checkpoint_selection={args.checkpoint_selection!r}: choose one of {CHECKPOINT_SELECTIONS}."
        )
    if args.trade_off_schedule not in TRADE_OFF_SCHEDULES:
        raise TransferConfigError(
            f"trade_off_schedule={args.trade_off_schedule!r}: choose one of {TRADE_OFF_SCHEDULES}."
        )
    if not 0.0 < args.trade_off_warmup <= 1.0:
        raise TransferConfigError(f"trade_off_warmup={args.trade_off_warmup}: must be in (0, 1].")
    if args.partial_weighting not in PARTIAL_WEIGHTINGS:
        raise TransferConfigError(f"partial_weighting={args.partial_weighting!r}: choose one of {PARTIAL_WEIGHTINGS}.")
    if args.bottleneck_dim is not None and args.bottleneck_dim < 1:
        raise TransferConfigError(f"bottleneck_dim={args.bottleneck_dim}: must be a positive integer (or unset).")
    if not (math.isfinite(args.target_batch_ratio) and args.target_batch_ratio > 0):
        raise TransferConfigError(f"target_batch_ratio={args.target_batch_ratio}: must be a finite number > 0.")
    if args.pada_every < 1:
        raise TransferConfigError(f"pada_every={args.pada_every}: must be >= 1 (optimizer steps).")
    if args.publish not in PUBLISH_FORMS:
        raise TransferConfigError(f"publish={args.publish!r}: choose one of {', '.join(PUBLISH_FORMS)}.")
    if not 0.0 < args.model_ema_decay < 1.0:
        raise TransferConfigError(f"model_ema_decay={args.model_ema_decay}: must be in (0, 1) (timm's default 0.9998).")
    if not 0.0 < args.validation_fraction <= 0.5:
        raise TransferConfigError(f"validation_fraction={args.validation_fraction}: must be in (0, 0.5].")
    if args.wise_ft_alpha is not None:
        from hf_transfer.methods.finetune.wise_ft import parse_alphas

        parse_alphas(args.wise_ft_alpha)  # refused here when it does not parse
    _check_recipe_values(args)


def _check_recipe_values(args: TransferArgs) -> None:
    """The values of timm's recipe options (policy string, probabilities, alphas, modes)."""
    from hf_transfer.data.mixing import MIX_MODES
    from hf_transfer.data.policies import ERASE_MODES, check_policy

    for name in ("reprob", "mixup_prob", "mixup_switch_prob"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise TransferConfigError(f"{name}={value}: must be a probability in [0, 1].")
    for name in ("mixup", "cutmix"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0.0):
            raise TransferConfigError(f"{name}={value}: must be >= 0 (a Beta distribution's alpha; 0 turns it off).")
    if args.remode not in ERASE_MODES:
        raise TransferConfigError(f"remode={args.remode!r}: choose one of {ERASE_MODES} (timm's random-erasing fills).")
    if args.mixup_mode not in MIX_MODES:
        raise TransferConfigError(f"mixup_mode={args.mixup_mode!r}: choose one of {MIX_MODES} (timm's Mixup modes).")
    if args.drop_path is not None and not (math.isfinite(args.drop_path) and 0.0 <= args.drop_path < 1.0):
        raise TransferConfigError(f"drop_path={args.drop_path}: must be a rate in [0, 1).")
    if args.aa is not None:
        check_policy(args.aa)


def _has_batchnorm(args: TransferArgs, model: nn.Module) -> bool:
    from hf_transfer.methods.domain.adabn import batchnorm_layers

    # a bottleneck adds a BatchNorm1d of its own (AdaBN re-estimates it)
    return bool(args.bottleneck_dim) or bool(batchnorm_layers(model))


#: what a backbone may have to have for an option to act (:attr:`OptionScope.backbone`): a check of the model
BACKBONE_NEEDS: dict[str, Callable[[TransferArgs, nn.Module], bool]] = {"batchnorm": _has_batchnorm}


def backbone_needs(args: TransferArgs) -> list[tuple[str, Any, tuple[str, ...]]]:
    """What the run asks of its backbone, as (who, value, needs).

    One for each option set here whose declaration needs something of it (``adabn``: BatchNorm), and for the method
    when it declares such a need itself."""
    method = registry.get_method(args.method)
    out: list[tuple[str, Any, tuple[str, ...]]] = (
        [("method", method.name, ("batchnorm",))] if method.needs.batchnorm else []
    )
    for name, default in {f.name: f.default for f in dataclasses.fields(args)}.items():
        value = getattr(args, name)
        scope = registry.option_scope(name, value)
        if scope is not None and scope.backbone and value != default:
            out.append((name, value, scope.backbone))
    return out


def check_backbone_needs(args: TransferArgs, model: nn.Module | None, backbone_id: str) -> None:
    """Refuse what needs of the backbone what ``model`` lacks (``adabn``: BatchNorm layers), naming the backbone.

    ``model``: the built backbone, or its architecture without weights; None: not known yet (the check runs
    again on the loaded model, before training)."""
    if model is None:
        return
    for who, value, needs in backbone_needs(args):
        for need in needs:
            if not BACKBONE_NEEDS[need](args, model):
                raise TransferConfigError(_missing_need(who, value, need, model, backbone_id))


def check_soft_targets(method: Method, producer: str) -> None:
    """Refuse ``producer``, an option that makes probability (soft) targets, with a method that cannot take them.

    ``producer`` makes them as mixup or cutmix would; a method takes them when it declares so
    (:attr:`~hf_transfer.methods.registry.Method.soft_targets`)."""
    if not method.soft_targets:
        takers = [n for n, m in registry.all_methods().items() if m.soft_targets and set(m.modes) & set(method.modes)]
        raise TransferConfigError(
            f"{producer} makes probability (soft) targets, but method={method.name} trains on hard labels only. "
            f"Remove {producer}, or use a method that takes them: {', '.join(takers) or 'none'}."
        )


def _missing_need(name: str, value: Any, need: str, model: nn.Module, backbone_id: str) -> str:
    from hf_transfer.models.norm_layers import norm_layer_types

    norms = ", ".join(norm_layer_types(model)) or "none"
    if need == "batchnorm" and name == "adabn":
        return (
            f"{name}={value!r} does nothing with backbone {backbone_id!r}: it has no BatchNorm layer with running "
            f"statistics (its normalisation layers: {norms}), so AdaBN has nothing to re-estimate on the target. "
            f"Remove --{name}, or add --bottleneck_dim (AdaBN then re-estimates the bottleneck's BatchNorm1d)."
        )
    return (
        f"{name}={value!r} needs a backbone with {need} layers; {backbone_id!r} has none (its normalisation layers: "
        f"{norms}). Choose another backbone, or remove it."
    )


#: TrainingArguments the run sets itself (hf_transfer.training.run): their value, and why
RUN_SETS = {
    "remove_unused_columns": (False, "the mode's datasets are tensors already; no column may be dropped"),
    "label_names": (["labels"], "every mode's batches carry their labels under 'labels'"),
    "hub_strategy": ("end", "the finished run folder is pushed in one commit, not each checkpoint"),
}


def refuse_run_owned(given: dict[str, Any]) -> None:
    """A TrainingArguments value the run overrides, given as something else: refused (it would be ignored)."""
    for key, (value, why) in RUN_SETS.items():
        if key in given and given[key] is not None and _plain(given[key]) != _plain(value):
            raise TransferConfigError(f"{key}={given[key]!r}: the run sets {key}={value!r} itself ({why}). Remove it.")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)  # an enum member (HubStrategy.END) compares as its value


#: what ``accelerate launch`` sets in every process when its config (or flags) ask for a sharding engine
LAUNCH_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def launched_engine() -> str | None:
    """The sharding engine (``"FSDP"``, ``"DeepSpeed"``) this process was launched under by accelerate, or None.

    A launch config's ``distributed_type: FSDP`` reaches the Trainer through the environment only, never through
    ``TrainingArguments.fsdp``."""
    for variable, engine in LAUNCH_ENGINES.items():
        if os.environ.get(variable, "false").lower() in ("1", "true"):
            return engine
    return None


def check_launch_engine(training_args: TrainingArguments) -> None:
    """Refuse an FSDP or DeepSpeed launch on the CPU: accelerate would train it as plain DDP without a word."""
    engine = launched_engine()
    if engine is None:
        return
    import torch

    if training_args.use_cpu or not torch.cuda.is_available():
        raise TransferConfigError(
            f"this process was launched for {engine} (the accelerate config's distributed_type), but the run trains "
            "on the CPU, where accelerate runs it as plain DDP (it shards only on GPUs). Launch with a DDP config "
            "on the CPU (recipes/accelerate/README.md), or run on GPUs."
        )


def check_own_step(args: TransferArgs, training_args: TrainingArguments) -> None:
    """Refuse, for a method that owns its training step, what assumes one loss and one update per batch.

    And the range test for a source-free method: it would train without the method's pass over the target."""
    method = registry.get_method(args.method, args.mode)
    if args.lr_find and args.mode == "domain" and not method.needs.source_data:
        raise TransferConfigError(
            f"learning_rate=auto: the range test trains without method={args.method}'s pass over the target images "
            "(which fills its pseudo-labels or memory banks before training), so its pick would not fit. Give "
            "--learning_rate a number."
        )
    if not method.owns_step:
        return
    if training_args.fsdp or training_args.deepspeed or launched_engine():
        raise TransferConfigError(
            f"method={args.method} owns its training step (several optimizer updates per batch on parts of the "
            "model), which FSDP and DeepSpeed do not allow: their engines take one update per step over the "
            "sharded model. Remove --fsdp/--deepspeed or launch with a DDP config (recipes/accelerate/ddp_*.yaml), or "
            "pick a one-loss method."
        )
    if args.lr_find:
        raise TransferConfigError(
            "learning_rate=auto: the range test trains with one loss and one update per batch, which is not "
            f"how method={args.method} trains (several passes per step): its pick would not fit. Give "
            "--learning_rate a number."
        )


def check_checkpoint_selection(args: TransferArgs, training_args: TrainingArguments) -> None:
    """A validator named by --checkpoint_selection needs evaluations to pick from, and no other rule picking."""
    chosen = args.checkpoint_selection
    if chosen in ("auto", "last"):
        return
    if training_args.eval_strategy == "no":
        raise TransferConfigError(
            f"checkpoint_selection={chosen}: the validator picks among the evaluated steps, and this run evaluates "
            "none. Add --eval_strategy steps --eval_steps N (or epoch), or remove --checkpoint_selection."
        )
    for other, on in (("model_ema", args.model_ema), ("load_best_model_at_end", training_args.load_best_model_at_end)):
        if on:
            raise TransferConfigError(
                f"checkpoint_selection={chosen} and {other}=true both choose the exported weights; keep one of them."
            )


def check_training_arguments(args: TransferArgs, training_args: TrainingArguments) -> None:
    """TrainingArguments the Trainer would take silently although they do not do what they say."""
    check_own_step(args, training_args)
    check_launch_engine(training_args)
    if training_args.max_steps < -1 or training_args.max_steps == 0:
        raise TransferConfigError(
            f"max_steps={training_args.max_steps}: give a positive number of optimizer steps, "
            "or -1 (the default) to train for num_train_epochs."
        )
    if getattr(args, "streaming", False) and training_args.max_steps <= 0:
        raise TransferConfigError(
            "streaming=true needs --max_steps > 0: a stream has no length, so num_train_epochs cannot end the run."
        )
    if getattr(args, "streaming", False) and getattr(args, "lr_find", False):
        raise TransferConfigError(
            "learning_rate=auto does not work with --streaming true (the range test reads the training split as a "
            "map-style dataset). Give --learning_rate a number."
        )
    if training_args.max_steps == -1 and not training_args.num_train_epochs > 0:
        raise TransferConfigError(
            f"num_train_epochs={training_args.num_train_epochs}: no training step would run "
            "and an untrained model would be exported; give num_train_epochs > 0 or max_steps."
        )
    if args.head_solver == "lbfgs":
        from transformers import TrainingArguments

        defaults = TrainingArguments.__dataclass_fields__
        for name in ("learning_rate", "num_train_epochs"):
            if getattr(training_args, name) != defaults[name].default:
                raise TransferConfigError(
                    f"{name}={getattr(training_args, name)} has no effect with head_solver=lbfgs (a full-batch "
                    "solve with a line search, at most max_steps iterations). Remove it, or use head_solver=sgd."
                )
        if args.features_on_device == "true":
            raise TransferConfigError("features_on_device=true has no effect with head_solver=lbfgs. Remove it.")
        if training_args.resume_from_checkpoint:
            from hf_transfer.methods.feature.lbfgs_head import NO_RESUME

            raise TransferConfigError(NO_RESUME)
    check_wise_ft_start(args)
    if (args.model_ema or args.wise_ft_alpha is not None) and (training_args.fsdp or training_args.deepspeed):
        what = "model_ema" if args.model_ema else "wise_ft_alpha"
        raise TransferConfigError(
            f"{what} averages or interpolates the whole model's state on every process, which FSDP and DeepSpeed "
            f"shard across processes. Remove --fsdp/--deepspeed (DDP is fine), or remove --{what}."
        )
    check_checkpoint_selection(args, training_args)
    if args.hub_create_pr and not training_args.push_to_hub:
        raise TransferConfigError("hub_create_pr=True has no effect without --push_to_hub true. Remove it.")
    check_report_to(training_args)
    push_repo_id(args, training_args)


def check_wise_ft_start(args: TransferArgs) -> None:
    """Refuse ``wise_ft_alpha`` where the head at alpha=0 would be a random one, as far as the arguments tell.

    That head is LP-FT's probe head, or the backbone's own when it has the target's classes: a timm architecture
    name starts from random init, so only lp_ft has one. (A loaded backbone's head is checked once it is loaded.)"""
    from hf_transfer.methods.finetune.lp_ft import has_probe_head

    if args.wise_ft_alpha is None or has_probe_head(args.method):
        return
    if not _loads_weights(args.backbone):
        raise TransferConfigError(
            f"wise_ft_alpha={args.wise_ft_alpha!r}: backbone {args.backbone!r} starts from random init, so neither "
            "a starting model nor a head at alpha=0 is worth interpolating towards. Use --method lp_ft (its probe "
            "head is the head at alpha=0) or a pretrained backbone whose classifier has the target's classes."
        )


def check_report_to(training_args: TrainingArguments) -> None:
    """Refuse a ``report_to`` the Trainer does not know.

    The Trainer checks the names only when it is built, after the data and the backbone are loaded (and ``plan``
    never builds it)."""
    from transformers import trainer  # the name the Trainer resolves when it is built

    try:
        trainer.get_reporting_integration_callbacks(training_args.report_to)
    except ValueError as err:
        raise TransferConfigError(f"report_to={training_args.report_to!r}: {err} Or none.") from None


def report_to_problem(training_args: TrainingArguments) -> str | None:
    """What this machine lacks for ``report_to``, or None.

    What it lacks is the integration's package (its callback refuses to start). ``train`` raises it before any work;
    ``plan`` reports it (the recipe may be meant for another machine)."""
    from transformers import trainer

    for callback in trainer.get_reporting_integration_callbacks(training_args.report_to):
        try:
            callback()  # what the Trainer does when it is built: imports the package, starts nothing
        except Exception as err:
            return f"report_to={training_args.report_to!r}: {type(err).__name__}: {err}"
    return None


def push_repo_id(args: TransferArgs, training_args: TrainingArguments) -> str | None:
    """The Hub repo ``--push_to_hub`` pushes to (None without it), refused when the push could not work."""
    if not training_args.push_to_hub:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    assert training_args.output_dir is not None, "TrainingArguments.__post_init__ fills its default output_dir"
    repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise TransferConfigError(f"hub_model_id {repo_id!r} is not a valid Hub repo id: {err}") from err
    adapters = registry.get_method(args.method).adapters
    if adapters and args.publish != "merged" and os.path.isdir(args.backbone):
        # the push would refuse the adapter at the end (its base is a path on this disk): say it first
        raise TransferConfigError(
            f"--push_to_hub with method={args.method} on the local base {args.backbone!r}: the adapter would point "
            "at a path on this machine. Train without --push_to_hub, then run `hf-transfer push OUTPUT_DIR REPO_ID "
            "--allow_local_base` if that is what you want, or use a Hub base."
        )
    return repo_id
