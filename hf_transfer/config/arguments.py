"""The run's own arguments, :class:`TransferArguments`, a dataclass for ``HfArgumentParser``.

Every ``transformers.TrainingArguments`` field is accepted as-is next to it (:mod:`hf_transfer.config.parse`).
Building it checks it (:func:`hf_transfer.config.checks.check_arguments`): a bad value, or an option set
where the run's mode and method give it no effect, is refused before anything is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hf_transfer.config.checks import HEAD_SOLVERS, check_arguments
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods import registry
from hf_transfer.methods.tta.base import TTA_MODE


@dataclass
class TransferArguments:
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
        default=None,
        metadata={
            "help": "Source dataset spec (labelled), required by mode=domain, except with a source-free method "
            "(which adapts a trained classifier --backbone with no source data)."
        },
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
    label_names_column: str | None = field(
        default=None,
        metadata={
            "help": "A string column holding each row's class name, for integer labels without names (default: "
            "the one string column that maps 1:1 to the label ids, when there is one)."
        },
    )
    class_names: str | None = field(
        default=None,
        metadata={
            "help": "--streaming: the class names of a stream whose label column holds integer ids (or the names as "
            "strings) without ClassLabel names: comma-separated, the name of id 0 first, or a text file with one "
            "name per line."
        },
    )
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
    # --- timm's training recipe, under timm's train.py names ---------------------------------------------
    aa: str | None = field(
        default=None,
        metadata={
            "help": "Augmentation policy, timm's strings: rand-m9-mstd0.5-inc1 (RandAugment) | original | v0 "
            "(AutoAugment) | 3a | augmix-m5-w3 | trivial (TrivialAugmentWide). Acts on every training image."
        },
    )
    reprob: float = field(default=0.0, metadata={"help": "Random-erasing probability per training image (timm)."})
    remode: str = field(
        default="pixel", metadata={"help": "Random-erasing fill: pixel (per-pixel noise) | rand | const (timm)."}
    )
    mixup: float = field(
        default=0.0, metadata={"help": "Mixup alpha (Beta distribution); > 0 turns mixup on (soft targets)."}
    )
    cutmix: float = field(
        default=0.0, metadata={"help": "CutMix alpha (Beta distribution); > 0 turns cutmix on (soft targets)."}
    )
    mixup_prob: float = field(
        default=1.0, metadata={"help": "Probability that a batch (or row) is mixed at all (mixup or cutmix on)."}
    )
    mixup_switch_prob: float = field(
        default=0.5, metadata={"help": "Probability of cutmix rather than mixup when both are on."}
    )
    mixup_mode: str = field(
        default="batch", metadata={"help": "How mix parameters are drawn: batch | pair | elem (per row) (timm)."}
    )
    drop_path: float | None = field(
        default=None,
        metadata={
            "help": "Drop-path (stochastic depth) rate of the backbone's blocks; the backbone must have one "
            "(timm models, transformers configs with drop_path_rate)."
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
    decode_cache_format: str = field(
        default="raw",
        metadata={
            "help": "fast input path: how decoded images are stored: raw (uint8 pixels) | jpeg (each resized image "
            "JPEG-encoded at decode_cache_quality, decoded per batch where the loader gathers it: by nvjpeg onto "
            "the GPU on CUDA with dataloader_num_workers 0, else on the CPU; a fraction of the bytes) | auto "
            "(raw while the pixels fit in a quarter of this machine's RAM, jpeg beyond).",
            "choices": ("raw", "jpeg", "auto"),
        },
    )
    decode_cache_quality: int = field(
        default=90,
        metadata={"help": "decode_cache_format=jpeg or auto: the JPEG quality (1-100) of the stored images."},
    )
    skip_bad_images: bool = field(
        default=False,
        metadata={
            "help": "Drop the rows whose image cannot be decoded (their count is reported) instead of stopping "
            "before training with an error that names them."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "mode=task or domain: read the training split (domain: the source's and the target's, zipped "
            "batch by batch) as a stream (datasets' streaming=True; a Hub id or local parquet files with a ClassLabel "
            "label column and a stored test split): nothing is downloaded or decoded ahead, images are decoded in the "
            "DataLoader and augmented on the device. Needs max_steps > 0; the test splits are loaded as usual."
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
    checkpoint_selection: str = field(
        default="auto",
        metadata={
            "help": "domain mode: which weights the run keeps. im | snd | entropy: those of the evaluation step whose "
            "predictions on the unlabelled target training images score best under that unsupervised validator "
            "(needs --eval_strategy steps or epoch) | last: the last step's | auto (default): im when the run "
            "evaluates during training (and neither model_ema nor load_best_model_at_end chooses), else last."
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
    feature_dtype: str = field(
        default="float32",
        metadata={
            "help": "feature mode: how the feature cache stores features: float32 | float16 (half the disk and page "
            "cache; the head still trains in float32; a feature beyond float16's range is an error).",
            "choices": ("float32", "float16"),
        },
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

    # --- robust fine-tuning: weight averaging and interpolation (mode=task, domain; see training/robust.py) ---
    model_ema: bool = field(
        default=False,
        metadata={
            "help": "Keep an exponential moving average of the weights (timm's ModelEmaV3), evaluated beside the raw "
            "weights at every evaluation (eval_ema_* metrics); the better of the two on the validation split is "
            "exported, and results.json and the card say which, with both numbers."
        },
    )
    model_ema_decay: float = field(
        default=0.9998, metadata={"help": "model_ema: decay of the moving average per optimizer step, in (0, 1)."}
    )
    model_ema_warmup: bool = field(
        default=False,
        metadata={
            "help": "model_ema: timm's decay warm-up, min(decay, 1 - (1 + step) ** -2/3), so the average follows "
            "the weights closely early in a short run."
        },
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={
            "help": "With model_ema or wise_ft_alpha: the seeded, class-stratified fraction of the labelled training "
            "split (target in task mode, source in domain mode) held out as the validation split that chooses "
            "between EMA and raw weights and the WiSE-FT alpha (never the test split), in (0, 0.5]."
        },
    )
    wise_ft_alpha: str | None = field(
        default=None,
        metadata={
            "help": "task mode: WiSE-FT, the exported weights become (1 - alpha) * start + alpha * fine-tuned. One "
            "alpha in [0, 1], a comma-separated sweep (0,0.5,1) or 'sweep' (0, 0.1, ..., 1): the best on the "
            "validation split is exported, the sweep on every evaluated domain goes to results.json and the card. "
            "The head at alpha=0 is lp_ft's probe head, or the backbone's own head when it already has the "
            "target's classes."
        },
    )

    def __post_init__(self) -> None:
        #: the recipe defaults the parser filled in for what the user left unset (hf_transfer.training.defaults);
        #: set by parse_args / arguments_from_dict, recorded in results.json and the card. Not an option (an
        #: attribute, not a dataclass field).
        self.recipe_defaults: dict[str, Any] = {}
        #: ``--learning_rate auto``: a range test picks the rate before training (hf_transfer.training.lr_find)
        self.lr_find: bool = False
        modes = tuple(m for m in registry.modes() if m != TTA_MODE)
        if self.mode == TTA_MODE:
            names = "|".join(registry.all_methods(TTA_MODE))
            raise TransferConfigError(
                "mode=tta: test-time adaptation is not trained by `hf-transfer train`; run `hf-transfer tta MODEL "
                f"--target DATASET --method {names} --output_dir DIR`."
            )
        if self.mode not in modes:
            raise TransferConfigError(f"mode={self.mode!r}: choose one of {modes}.")
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
        check_arguments(self, method)
        if self.backbone_lr_scale is None:
            self.backbone_lr_scale = method.backbone_lr_scale
