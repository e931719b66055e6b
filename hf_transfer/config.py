"""Run arguments as dataclasses for ``HfArgumentParser``: one YAML/JSON file, flags, or both.

Every ``transformers.TrainingArguments`` field is accepted as-is next to :class:`TransferArguments`.
A config file is read first and flags given on the command line override it; a key in the file
that no dataclass knows is an error that names the key (no silent typos).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from hf_transfer.config_file import read_config_file
from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    from transformers import TrainingArguments
from hf_transfer.methods import registry

TRADE_OFF_SCHEDULES = ("constant", "dann", "linear")
HEAD_SOLVERS = ("sgd", "lbfgs")
PARTIAL_WEIGHTINGS = ("none", "exclude", "pada")


@dataclass
class TransferArguments:
    #: the recipe defaults the parser filled in for what the user left unset (hf_transfer.training.defaults);
    #: set by parse_args / arguments_from_dict, recorded in results.json and the card. Not an option.
    recipe_defaults: ClassVar[dict[str, Any]] = {}
    #: ``--learning_rate auto``: a range test picks the rate before training (hf_transfer.training.lr_find)
    lr_find: ClassVar[bool] = False

    mode: str = field(
        metadata={"help": "Transfer mode: feature | domain | task (the modes of the registered methods)."}
    )
    backbone: str = field(
        metadata={
            "help": "Hub id (org/name, timm/name, hf-hub:...), local folder, or a timm architecture name (random init)."
        }
    )
    target: str = field(
        metadata={"help": "Target dataset spec: org/name[:config][@rev][#split], a local folder, or builtin:NAME."}
    )
    source: str | None = field(
        default=None, metadata={"help": "Source dataset spec (labelled), required by mode=domain."}
    )
    method: str | None = field(
        default=None,
        metadata={
            "help": "A registered method of the mode (README's method table, or hf-transfer plan): domain: source_only "
            "(default) | dann | cdan | dan | coral | mcc | mdd | ... ; task: full (default) | partial | linear | "
            "lora; feature: linear."
        },
    )
    method_args: dict | str | None = field(
        default=None,
        metadata={
            "help": "The method's own options as a dict (YAML) or JSON string, e.g. '{\"hold\": 0.15}'; "
            "checked against the method's registered options (names and types)."
        },
    )
    trade_off: float = field(default=1.0, metadata={"help": "Weight of the transfer loss (domain mode)."})
    backbone_revision: str | None = field(default=None, metadata={"help": "Revision of the backbone on the Hub."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: found automatically)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: found automatically)."})
    label_policy: str = field(
        default="shared",
        metadata={
            "help": "Classes not in both domains: shared (keep shared only) | partial (target subset of source) "
            "| strict."
        },
    )
    target_classes: str | None = field(
        default=None,
        metadata={
            "help": "Keep only these target classes (rows and declared labels): first:K (the first K in the "
            "target's label order, as the Office-Home 25-class partial tasks) or comma-separated names (as "
            "Office-31's 10 Caltech classes). With label_policy=partial this makes a partial-DA task."
        },
    )
    image_size: int | None = field(default=None, metadata={"help": "Override the backbone's input size."})
    crop_pct: float | None = field(default=None, metadata={"help": "Override the backbone's eval crop fraction."})
    augment: str = field(
        default="standard",
        metadata={
            "help": "Training augmentation: standard (random resized crop + flip) | light (small shifts, no flip) "
            "| none."
        },
    )
    input_path: str = field(
        default="fast",
        metadata={
            "help": "fast: decode images once into a uint8 cache and augment whole batches on the model's device "
            "(exact resume); stock: torchvision PIL transforms per sample in the DataLoader.",
            "choices": ("fast", "stock"),
        },
    )
    decoded_cache_dir: str | None = field(
        default=None,
        metadata={"help": "fast input path: where decoded images live (default $HF_TRANSFER_CACHE/decoded)."},
    )
    skip_bad_images: bool = field(
        default=False,
        metadata={
            "help": "Drop the rows whose image cannot be decoded (their count is reported) instead of stopping "
            "before training with an error that names them."
        },
    )
    freeze: str | None = field(
        default=None,
        metadata={
            "help": "task mode: comma-separated parameter groups to freeze (stem, stage_0, ..., neck, backbone)."
        },
    )
    backbone_lr_scale: float | None = field(
        default=None,
        metadata={
            "help": "Discriminative LR: backbone groups train at learning_rate * backbone_lr_scale, the head at "
            "learning_rate. Default: the method's registered rule (1.0; mdd 0.1)."
        },
    )
    adabn: bool = field(
        default=False,
        metadata={
            "help": "domain mode: re-estimate BatchNorm statistics on the "
            "target training images after training (AdaBN)."
        },
    )
    # --- options every domain-adaptation method shares (mode=domain) ---
    trade_off_schedule: str = field(
        default="constant",
        metadata={
            "help": "domain mode: schedule of the transfer-loss weight over training progress p: constant | dann "
            "(trade_off * (2 / (1 + exp(-10 p)) - 1)) | linear (0 -> trade_off over the first "
            "trade_off_warmup of training)."
        },
    )
    trade_off_warmup: float = field(
        default=0.1,
        metadata={"help": "trade_off_schedule=linear: fraction of training over which the weight ramps up, in (0, 1]."},
    )
    bottleneck_dim: int | None = field(
        default=None,
        metadata={
            "help": "domain mode: put a bottleneck Linear(feature_dim, d) + BatchNorm1d(d) and a new head Linear(d, K) "
            "on the backbone; alignment losses see the d-dim features. Folded into one plain Linear head at "
            "export."
        },
    )
    target_batch_ratio: float = field(
        default=1.0, metadata={"help": "domain mode: target images per source image in each training batch (> 0)."}
    )
    partial_weighting: str = field(
        default="exclude",
        metadata={
            "help": "domain mode, partial label spaces: none | exclude (drop the source rows of classes the target "
            "does not declare) | pada (down-weight classes by the mean target prediction, PADA)."
        },
    )
    pada_every: int = field(
        default=100,
        metadata={"help": "partial_weighting=pada: re-estimate the class weights every this many optimizer steps."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training images per domain (seeded subset)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many test images per domain."}
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "feature mode: where cached features live (default $HF_TRANSFER_CACHE/features)."},
    )
    feature_batch_size: int = field(default=256, metadata={"help": "Batch size of the feature extraction pass."})
    channels_last: str = field(
        default="auto",
        metadata={
            "help": "channels_last memory format for the model and its inputs (training and feature extraction): "
            "auto (on for a convolutional backbone on CUDA or the CPU, off for transformers) | true | false. "
            "For torch.compile "
            "use TrainingArguments' --torch_compile (it also compiles the feature extraction pass)."
        },
    )
    auto_bf16: bool = field(
        default=True,
        metadata={
            "help": "When neither --bf16 nor --fp16 is given: bf16 mixed precision on a CUDA GPU that supports it "
            "(tensor cores; no loss scaling needed), fp32 elsewhere (bf16 autocast is slower on most CPUs). "
            "false: the TrainingArguments as given."
        },
    )
    head_solver: str = field(
        default="sgd",
        metadata={
            "help": "feature mode: how the linear head is trained on the cached features: sgd (the Trainer's "
            "optimizer over num_train_epochs) | lbfgs (full-batch L-BFGS to the optimum of the L2-regularised "
            "logistic loss, as scikit-learn's probes: at most max_steps iterations, default 100; L2 = "
            "weight_decay, or 1/n when weight_decay is 0). With lbfgs, learning_rate and num_train_epochs do not "
            "apply and are refused."
        },
    )
    cpu_threads: str = field(
        default="auto",
        metadata={
            "help": "intra-op threads of the training process: auto (OMP_NUM_THREADS when set; else the usable "
            "cores per local process, minus one per loader worker on --input_path stock, whose workers decode and "
            "augment with PIL) | a number. The resolved value is in results.json (speed.cpu_threads)."
        },
    )
    features_on_device: str = field(
        default="auto",
        metadata={
            "help": "feature mode: copy the cached TRAIN features to the training device once and train the head "
            "on rows gathered there (no per-step host reads or copies): auto (on for CUDA when they take "
            "under a quarter of the free device memory) | true | false (rows read from the memmap)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds a previous run: its outputs (weights, card, examples, "
            "checkpoints, plots) are removed first. Without it such a folder is refused, unless the same run "
            "is resumed with --resume_from_checkpoint."
        },
    )
    hub_create_pr: bool = field(
        default=False,
        metadata={
            "help": "With --push_to_hub: open a pull request on the Hub repo instead of committing to the branch."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from the Hub (off by default)."}
    )
    ranking: str | None = field(
        default=None,
        metadata={
            "help": "The ranking.json of the `hf-transfer rank` that chose this backbone (the --top_k configs set "
            "it): its candidates and scores are recorded in results.json and shown in the model card's "
            "'Why this backbone' section. Refused when the file is not a ranking, or ranked other data or "
            "did not rank this backbone."
        },
    )
    # --- task adaptation strategies (mode=task; see hf_transfer.methods.finetune, regularizers, adapters) ---
    unfreeze_every: float | None = field(
        default=None,
        metadata={
            "help": "task mode: gradual unfreezing. The head trains from the start; the backbone groups not frozen by "
            "--freeze are unfrozen one at a time from the head backwards, one every UNFREEZE_EVERY steps or "
            "epochs (--unfreeze_unit). Resume-safe."
        },
    )
    unfreeze_unit: str = field(
        default="steps", metadata={"help": "Unit of --unfreeze_every: steps | epochs.", "choices": ("steps", "epochs")}
    )
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "task mode: layer-wise LR decay in (0, 1]: group g trains at learning_rate * layer_decay ** d, "
            "d its distance from the head in stem, stage_0..N, neck, head (times backbone_lr_scale for "
            "backbone groups)."
        },
    )
    regularizer: str | None = field(
        default=None,
        metadata={
            "help": "task mode: regularised fine-tuning: l2sp (penalty towards the pretrained weights; replaces weight "
            "decay) | bss (batch spectral shrinkage of the features)."
        },
    )
    l2sp_alpha: float = field(
        default=0.01, metadata={"help": "L2-SP: weight alpha of ||w - w_pretrained||^2 / 2 on the backbone."}
    )
    l2sp_beta: float = field(default=0.01, metadata={"help": "L2-SP: weight beta of ||w_head||^2 / 2 on the new head."})
    bss_eta: float = field(
        default=1e-3,
        metadata={"help": "BSS: weight eta of the k smallest squared singular values of the batch features."},
    )
    bss_k: int = field(default=1, metadata={"help": "BSS: number k of smallest singular values penalised."})
    k_shot: int | None = field(
        default=None,
        metadata={"help": "task mode: keep only k labelled target training images per class (seeded by --seed)."},
    )
    lora_r: int = field(default=8, metadata={"help": "method=lora: rank r of the LoRA updates."})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "method=lora: LoRA alpha (scaling alpha / r); default r."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "method=lora: dropout on the LoRA input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "method=lora: override the automatic per-architecture choice: comma-separated module names or "
            "suffixes (qkv,proj) or re:<regex> over module names."
        },
    )
    publish: str = field(
        default="both",
        metadata={
            "help": "method=lora: what the run folder (and a push) holds: both (the merged full model at the root, "
            "which pipeline/AutoModel/Inference Endpoints serve with no arguments, and the adapter in adapter/) | "
            "merged (only the merged model) | adapter (only the adapter, plus an Endpoints handler.py)."
        },
    )

    def __post_init__(self):
        modes = registry.modes()
        if self.mode not in modes:
            raise TransferConfigError(f"mode={self.mode!r}: choose one of {modes}.")
        if self.mode == "domain" and not self.source:
            raise TransferConfigError("mode=domain needs --source (the labelled source domain).")
        if isinstance(self.method_args, str):
            try:
                self.method_args = json.loads(self.method_args) if self.method_args.strip() else {}
            except json.JSONDecodeError as err:
                raise TransferConfigError(f"method_args is not valid JSON: {err}") from err
        self.method_args = dict(self.method_args or {})
        from hf_transfer.models.speed import normalize_auto_flag, resolve_cpu_threads

        self.channels_last = normalize_auto_flag(self.channels_last)
        self.cpu_threads = str(self.cpu_threads).strip().lower()
        if self.head_solver not in HEAD_SOLVERS:
            raise TransferConfigError(f"head_solver={self.head_solver!r}: choose one of {HEAD_SOLVERS}.")
        resolve_cpu_threads(self.cpu_threads, self.input_path, 0)  # a bad value is refused here, before any work
        self.features_on_device = normalize_auto_flag(self.features_on_device, "features_on_device")
        if self.method is None:
            self.method = registry.default_method(self.mode)
        method = registry.get_method(self.method, self.mode)
        _check_domain_options(self)
        _check_publish(self)
        check_options_act(self)
        method.options(self.method_args)
        if self.backbone_lr_scale is None:
            self.backbone_lr_scale = method.backbone_lr_scale


def _is_fine_tuning(args) -> bool:
    return args.mode == "task" and args.method in ("full", "partial")


def _transfers(args) -> bool:
    return args.mode == "domain" and args.method != "source_only"


#: where each mode- or method-specific option acts: (predicate on the arguments, what it needs). Set
#: away from its default anywhere else it would be accepted and ignored, so it is refused instead.
OPTION_SCOPE = {
    "method_args": (
        lambda a: bool(registry.get_method(a.method).option_fields()),
        "a method with options of its own (domain methods; task and feature methods take none)",
    ),
    "trade_off": (_transfers, "mode=domain with a method other than source_only"),
    "trade_off_schedule": (_transfers, "mode=domain with a method other than source_only"),
    "trade_off_warmup": (lambda a: _transfers(a) and a.trade_off_schedule == "linear", "trade_off_schedule=linear"),
    "target_batch_ratio": (_transfers, "mode=domain with a method other than source_only"),
    "bottleneck_dim": (lambda a: a.mode == "domain", "mode=domain"),
    "adabn": (lambda a: a.mode == "domain", "mode=domain"),
    "partial_weighting": (lambda a: a.mode == "domain", "mode=domain"),
    "pada_every": (lambda a: a.mode == "domain" and a.partial_weighting == "pada", "partial_weighting=pada"),
    "backbone_lr_scale": (
        lambda a: a.mode == "domain" or _is_fine_tuning(a),
        "mode=domain, or mode=task with method full or partial (a backbone that trains)",
    ),
    "layer_decay": (_is_fine_tuning, "mode=task with method full or partial"),
    "freeze": (_is_fine_tuning, "mode=task with method full or partial (linear freezes the whole backbone)"),
    "unfreeze_every": (_is_fine_tuning, "mode=task with method full or partial"),
    "unfreeze_unit": (lambda a: _is_fine_tuning(a) and a.unfreeze_every is not None, "unfreeze_every"),
    "regularizer": (lambda a: a.mode == "task" and a.method != "lora", "mode=task with method full, partial or linear"),
    "l2sp_alpha": (lambda a: a.mode == "task" and a.regularizer == "l2sp", "regularizer=l2sp"),
    "l2sp_beta": (lambda a: a.mode == "task" and a.regularizer == "l2sp", "regularizer=l2sp"),
    "bss_eta": (lambda a: a.mode == "task" and a.regularizer == "bss", "regularizer=bss"),
    "bss_k": (lambda a: a.mode == "task" and a.regularizer == "bss", "regularizer=bss"),
    "k_shot": (lambda a: a.mode == "task", "mode=task"),
    **{
        name: (lambda a: a.mode == "task" and a.method == "lora", "mode=task method=lora")
        for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "publish")
    },
    "augment": (
        lambda a: a.mode != "feature",
        "mode=domain or task (feature mode trains on cached features of un-augmented images)",
    ),
    "decoded_cache_dir": (lambda a: a.input_path == "fast", "input_path=fast"),
    "feature_cache_dir": (lambda a: a.mode == "feature", "mode=feature"),
    "features_on_device": (lambda a: a.mode == "feature", "mode=feature"),
    "head_solver": (lambda a: a.mode == "feature", "mode=feature"),
    "feature_batch_size": (
        lambda a: a.mode in ("feature", "domain"),
        "mode=feature (extraction) or mode=domain (domain-gap features)",
    ),
    "label_policy": (lambda a: a.source is not None, "a --source to align with the target"),
    "backbone_revision": (
        lambda a: _loads_weights(a.backbone),
        "a backbone from the Hub or a folder (a timm architecture name starts from random init)",
    ),
    "trust_remote_code": (
        lambda a: _loads_weights(a.backbone),
        "a backbone from the Hub or a folder (a timm architecture name runs no remote code)",
    ),
}


def _loads_weights(backbone: str) -> bool:
    """A Hub id or a folder, as :func:`hf_transfer.models.backbones.load_backbone` tells them from timm names."""
    return not backbone.startswith("timm:") and ("/" in backbone or os.path.exists(backbone))


def check_options_act(args: TransferArguments) -> None:
    """Refuse an option set where it has no effect (see :data:`OPTION_SCOPE`), naming it."""
    defaults = {f.name: f.default for f in dataclasses.fields(TransferArguments)}
    unset = {name: (default,) for name, default in defaults.items()}
    unset["backbone_lr_scale"] = (None, registry.get_method(args.method).backbone_lr_scale)  # the method's LR rule
    for name, (acts, needs) in OPTION_SCOPE.items():
        value = getattr(args, name)
        if value in unset[name] or (defaults[name] is None and value == {}):
            continue
        if not acts(args):
            raise TransferConfigError(
                f"{name}={value!r} has no effect with mode={args.mode} method={args.method}: "
                f"it acts only with {needs}. Remove it."
            )


def _check_publish(args: TransferArguments) -> None:
    from hf_transfer.models.adapters import PUBLISH_FORMS

    if args.publish not in PUBLISH_FORMS:
        raise TransferConfigError(f"publish={args.publish!r}: choose one of {', '.join(PUBLISH_FORMS)}.")


def check_training_arguments(args: TransferArguments, training_args) -> None:
    """TrainingArguments the Trainer would take silently although they do not do what they say."""
    if training_args.max_steps < -1 or training_args.max_steps == 0:
        raise TransferConfigError(
            f"max_steps={training_args.max_steps}: give a positive number of optimizer steps, "
            "or -1 (the default) to train for num_train_epochs."
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
    if args.hub_create_pr and not training_args.push_to_hub:
        raise TransferConfigError("hub_create_pr=True has no effect without --push_to_hub true. Remove it.")
    check_report_to(training_args)
    push_repo_id(args, training_args)


def check_report_to(training_args) -> None:
    """Refuse a ``report_to`` the Trainer does not know: it checks the names only when it is built, after the
    data and the backbone are loaded (and ``plan`` never builds it)."""
    from transformers import trainer  # the name the Trainer resolves when it is built

    try:
        trainer.get_reporting_integration_callbacks(training_args.report_to)
    except ValueError as err:
        raise TransferConfigError(f"report_to={training_args.report_to!r}: {err} Or none.") from None


def report_to_problem(training_args) -> str | None:
    """What this machine lacks for ``report_to`` (the integration's package: its callback refuses to start), or
    None. ``train`` raises it before any work; ``plan`` reports it (the recipe may be meant for another machine)."""
    from transformers import trainer

    for callback in trainer.get_reporting_integration_callbacks(training_args.report_to):
        try:
            callback()  # what the Trainer does when it is built: imports the package, starts nothing
        except Exception as err:
            return f"report_to={training_args.report_to!r}: {type(err).__name__}: {err}"
    return None


def push_repo_id(args: TransferArguments, training_args) -> str | None:
    """The Hub repo ``--push_to_hub`` pushes to (None without it), refused when the push could not work."""
    if not training_args.push_to_hub:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise TransferConfigError(f"hub_model_id {repo_id!r} is not a valid Hub repo id: {err}") from err
    if args.method == "lora" and args.publish != "merged" and os.path.isdir(args.backbone):
        # the push would refuse the adapter at the end (its base is a path on this disk): say it first
        raise TransferConfigError(
            f"--push_to_hub with method=lora on the local base {args.backbone!r}: the adapter would point at a "
            "path on this machine. Train without --push_to_hub, then run `hf-transfer push OUTPUT_DIR REPO_ID "
            "--allow_local_base` if that is what you want, or use a Hub base."
        )
    return repo_id


def _check_domain_options(args: TransferArguments) -> None:
    """The shared domain-adaptation options, checked before anything is loaded."""
    import math

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
    if args.mode != "domain":
        for name, default in (
            ("bottleneck_dim", None),
            ("target_batch_ratio", 1.0),
            ("trade_off_schedule", "constant"),
        ):
            if getattr(args, name) != default:
                raise TransferConfigError(f"{name} applies to mode=domain only (mode={args.mode!r}); remove it.")
        if args.partial_weighting == "pada":
            raise TransferConfigError(f"partial_weighting='pada' applies to mode=domain only (mode={args.mode!r}).")
    elif args.partial_weighting == "pada" and args.method == "source_only":
        raise TransferConfigError(
            "partial_weighting='pada' estimates class weights from target predictions, but "
            "method='source_only' sees no target image; pick another method or "
            "partial_weighting='exclude'."
        )
    if args.target_batch_ratio != 1.0 and args.method == "source_only":
        raise TransferConfigError(
            "target_batch_ratio has no effect with method='source_only' (no target batch); remove it."
        )


def _parser():
    from transformers import HfArgumentParser, TrainingArguments

    # allow_abbrev=False: argparse would otherwise take a prefix typo (--max_step) as the full name
    return HfArgumentParser((TransferArguments, TrainingArguments), allow_abbrev=False)


#: options that were removed: naming one is refused with what replaced it (they are in no dataclass or help)
RETIRED_OPTIONS = {
    "merge_adapter": "merge_adapter is replaced by --publish: both (the default: merged model at the root + "
    "adapter/) or merged (merged model only). Remove merge_adapter.",
}


def _refuse_retired(keys: set[str]) -> None:
    """A removed option is refused naming its replacement, not as an unknown key."""
    for key in sorted(keys & set(RETIRED_OPTIONS)):
        raise TransferConfigError(RETIRED_OPTIONS[key])


def _known_keys() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for cls in (TransferArguments, TrainingArguments) for f in dataclasses.fields(cls)}


# a model card's reproduce block writes local paths as <OUTPUT_DIR>, <PATH_TO: outputs/x>, <REPO_ID>
CARD_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*(?::[^>]*)?>")
PLACEHOLDER_MEANING = {
    "OUTPUT_DIR": "a new folder of your choice",
    "PATH_TO": "that folder's path on this machine",
    "REPO_ID": "your Hub repo id",
}


def reject_placeholders(values: dict[str, Any], where: str) -> None:
    """Refuse a value still holding a placeholder of a model card's reproduce block, before anything runs
    (otherwise ``<OUTPUT_DIR>`` becomes a folder of that name, and ``<PATH_TO: ...>`` a confusing load error)."""
    for key, value in values.items():
        found = CARD_PLACEHOLDER.search(value) if isinstance(value, str) else None
        if found:
            name = found.group(0)[1:-1].split(":")[0]
            raise TransferConfigError(
                f"{where}: {key} is {value!r}, a placeholder from a model card's reproduce block; replace "
                f"{found.group(0)!r} with {PLACEHOLDER_MEANING.get(name, 'the value it stands for')}."
            )


def _flag_values(argv: list[str]) -> dict[str, str]:
    """``--key value`` pairs of a command line (``--key=value`` too), for :func:`reject_placeholders`."""
    out = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            out[key] = value
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[arg[2:]] = argv[i + 1]
    return out


def load_config_file(path: str) -> dict:
    """The arguments in a YAML/JSON config file, read within bounds (:mod:`hf_transfer.config_file`)."""
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise TransferConfigError(f"Config file {path!r} must hold a mapping of argument names to values.")
    _refuse_retired(set(data))
    unknown = sorted(set(data) - _known_keys())
    if unknown:
        raise TransferConfigError(
            f"Config file {path!r}: unknown key(s) {unknown}; they are neither TransferArguments nor "
            "TrainingArguments fields."
        )
    reject_placeholders(data, f"Config file {path!r}")
    return data


def _to_argv(data: dict) -> list[str]:
    argv: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, dict):
            argv.append(json.dumps(value))
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


def _given_keys(argv: list[str]) -> set[str]:
    """The argument names a command line sets (``--name value`` and ``--name=value``)."""
    return {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}


def parse_args(argv: list[str] | None = None) -> tuple[TransferArguments, TrainingArguments]:
    """``[--config FILE] [--flag value ...]`` -> (TransferArguments, TrainingArguments), with the recipe defaults
    (:mod:`hf_transfer.training.defaults`) for what neither sets."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv or "-h" in argv or "--help" in argv:
        from hf_transfer.help import full_help, short_help

        print(full_help(_parser()) if "--help-all" in argv else short_help(TransferArguments))
        raise SystemExit(0)
    file_argv: list[str] = []
    given: set[str] = set()
    auto_lr = False
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if argv.count("--config") > 1:
        raise TransferConfigError("--config is given more than once; pass one config file (flags override it).")
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise TransferConfigError("--config needs a file path.")
        data = load_config_file(argv[i + 1])
        given |= {key for key, value in data.items() if value is not None}
        auto_lr = _is_auto(data.get("learning_rate"))
        file_argv = _to_argv({k: v for k, v in data.items() if not (k == "learning_rate" and auto_lr)})
        argv = argv[:i] + argv[i + 2 :]
    flag_lr = _flag_values(argv).get("learning_rate")
    if flag_lr is not None:  # a flag overrides the file, "auto" or a number
        auto_lr = _is_auto(flag_lr)
        if auto_lr:
            argv = _drop_flag(argv, "learning_rate")
            given.add("learning_rate")
    given |= _given_keys(argv)
    _refuse_retired(given)
    reject_placeholders(_flag_values(argv), "Command line")
    transfer_args, training_args = _parse_argv(file_argv + argv)
    recipe = _recipe_defaults(transfer_args, given)
    if recipe:
        transfer_args, training_args = _parse_argv(_to_argv(recipe) + file_argv + argv)
    transfer_args.recipe_defaults = recipe
    _set_lr_find(transfer_args, auto_lr)
    return transfer_args, resolve_precision(transfer_args, training_args)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _drop_flag(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``--name value`` / ``--name=value``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == f"--{name}":
            skip = True
        elif not arg.startswith(f"--{name}="):
            out.append(arg)
    return out


def _set_lr_find(transfer_args: TransferArguments, auto: bool) -> None:
    """``learning_rate: auto``: a range test picks the rate (refused where nothing trains with a rate)."""
    if auto and transfer_args.head_solver == "lbfgs":
        raise TransferConfigError(
            "learning_rate=auto has no effect with head_solver=lbfgs (a full-batch solve with a line search, no "
            "learning rate). Remove it, or use head_solver=sgd."
        )
    transfer_args.lr_find = auto


def _parse_argv(argv: list[str]) -> tuple[TransferArguments, TrainingArguments]:
    """The two dataclasses from an argv; unknown arguments and TrainingArguments' own refusals named."""
    try:
        transfer_args, training_args, rest = _parser().parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True
        )
    except ValueError as err:  # TrainingArguments' own validation (e.g. bf16 without a GPU)
        raise TransferConfigError(str(err)) from err
    if rest:
        raise TransferConfigError(f"Unknown argument(s): {rest}")
    return transfer_args, training_args


def _recipe_defaults(transfer_args: TransferArguments, given: set[str]) -> dict[str, Any]:
    """The mode's and method's recipe values for what the user left unset (see hf_transfer.training.defaults)."""
    from hf_transfer.training.defaults import defaults_to_apply, recipe_for

    if transfer_args.head_solver == "lbfgs":  # one full-batch solve: no optimizer, schedule or epochs to default
        return {}
    method = registry.get_method(transfer_args.method, transfer_args.mode)
    return defaults_to_apply(recipe_for(transfer_args.mode, method.recipe), given)


def resolve_precision(transfer_args: TransferArguments, training_args: TrainingArguments) -> TrainingArguments:
    """Apply ``auto_bf16``: bf16 on a bf16-capable CUDA device unless the user chose a precision."""
    import torch

    if (
        transfer_args.auto_bf16
        and not (training_args.bf16 or training_args.fp16)
        and not training_args.use_cpu
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
    ):
        training_args.bf16 = True
        training_args.mixed_precision = "bf16"  # what the Trainer's Accelerator reads (set in __post_init__)
    return training_args


def arguments_from_dict(data: dict[str, Any]) -> tuple[TransferArguments, TrainingArguments]:
    """Python API: the same dataclasses from a plain dict (unknown keys are an error), with the recipe defaults."""
    _refuse_retired(set(data))
    unknown = sorted(set(data) - _known_keys())
    if unknown:
        raise TransferConfigError(f"Unknown argument(s) {unknown}.")
    reject_placeholders(data, "Arguments")
    auto_lr = _is_auto(data.get("learning_rate"))
    given = {key for key, value in data.items() if value is not None}
    data = {k: v for k, v in data.items() if not (k == "learning_rate" and auto_lr)}
    transfer_args, training_args = _parse_dict(data)
    recipe = _recipe_defaults(transfer_args, given)
    if recipe:
        transfer_args, training_args = _parse_dict({**recipe, **data})
    transfer_args.recipe_defaults = recipe
    _set_lr_find(transfer_args, auto_lr)
    return transfer_args, resolve_precision(transfer_args, training_args)


def _parse_dict(data: dict[str, Any]) -> tuple[TransferArguments, TrainingArguments]:
    try:
        return _parser().parse_dict(data)
    except ValueError as err:
        raise TransferConfigError(str(err)) from err
