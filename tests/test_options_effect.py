"""Nothing accepted and ignored: every option either changes what the run does or is refused.

One walk over EVERY ``TransferArguments`` field and the ``TrainingArguments`` fields the README
promises, in each mode: the option is set (on top of what makes it act, e.g. ``method=lora`` for
``lora_r``) and the run is BUILT, not trained (``prepare_run``); what the option should change is
read from the built objects (optimizer groups, a loss on one batch, the planned steps, the datasets,
the Trainer's flow decisions, ...) and compared with the same run without it. Or the option is
refused with a ``TransferConfigError`` that names it. A new field without a probe here fails the test.
"""

import dataclasses
import hashlib
import itertools
import os

import datasets
import numpy as np
import pytest
import torch
import transformers.trainer
from transformers import TrainerControl, TrainerState

import hf_transfer.methods.feature.cache
import hf_transfer.methods.feature.extract
import hf_transfer.training.build
import hf_transfer.training.run
from hf_transfer.config import TransferArguments, arguments_from_dict, resolve_precision
from hf_transfer.errors import TransferConfigError
from hf_transfer.models.backbones import load_backbone
from hf_transfer.models.export import export_model
from hf_transfer.training.run import prepare_run

_RUN_NUMBER = itertools.count()
SEEN: dict = {}  # what the spies saw during the last build

MODES = {
    "feature": {"mode": "feature"},
    "domain": {"mode": "domain", "method": "dann", "source": "{source}"},
    "task": {"mode": "task"},
}


def _domain(path, classes, n_train, n_test, seed, corrupt: bool = False):
    """Random 32 px images; two image columns and an extra int label column (for the column options);
    ``corrupt``: the first training image is bytes that do not decode."""
    rng = np.random.default_rng(seed)

    def split(n, bad=False):
        labels = [i % len(classes) for i in range(n)]
        images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
        inverted = [255 - im for im in images]
        if bad:
            images[0] = {"bytes": b"not an image", "path": None}
        return datasets.Dataset.from_dict(
            {
                "image": images,
                "image2": inverted,
                "label": labels,
                "coarse": [y % 2 for y in labels],
                # two string columns that both name the coarse ids: no automatic pick, label_names_column picks
                "coarse_name": [("even", "odd")[y % 2] for y in labels],
                "coarse_word": [("zero", "one")[y % 2] for y in labels],
            },
            features=datasets.Features(
                {
                    "image": datasets.Image(),
                    "image2": datasets.Image(),
                    "label": datasets.ClassLabel(names=classes),
                    "coarse": datasets.Value("int64"),
                    "coarse_name": datasets.Value("string"),
                    "coarse_word": datasets.Value("string"),
                }
            ),
        )

    datasets.DatasetDict({"train": split(n_train, corrupt), "test": split(n_test)}).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("options_data")
    return {
        "target": _domain(root / "target", ["a", "b", "c"], 24, 12, 0),
        "source": _domain(root / "source", ["a", "b", "c", "d"], 32, 8, 1),
        "corrupt": _domain(root / "corrupt", ["a", "b", "c"], 24, 12, 0, corrupt=True),
        "parquet": _parquet(_domain(root / "target_parquet_src", ["a", "b", "c"], 24, 12, 0), root / "parquet"),
        "parquet_source": _parquet(
            _domain(root / "source_parquet_src", ["a", "b", "c", "d"], 32, 8, 1), root / "parquet_source"
        ),
        "base": _pretrained(root / "base"),
    }


def _parquet(saved: str, folder) -> str:
    """The splits of a saved domain as parquet files (what ``--streaming`` reads)."""
    os.makedirs(folder / "data")
    for split, ds in datasets.load_from_disk(saved).items():
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return str(folder)


def _pretrained(folder) -> str:
    """A saved test_resnet: LoRA needs base weights that a loader finds again."""
    torch.manual_seed(0)
    export_model(load_backbone("test_resnet", ["a", "b", "c"], image_size=32, crop_pct=1.0), str(folder))
    return str(folder)


def _base(tmp_path, data, mode: str, /, **extra) -> dict:
    args = dict(
        backbone="test_resnet",
        target=data["target"],
        image_column="image",
        image_size=32,
        crop_pct=1.0,
        output_dir=str(tmp_path / f"run{next(_RUN_NUMBER)}"),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        learning_rate=0.05,
        optim="sgd",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    args.update({k: v.format(**data) if isinstance(v, str) else v for k, v in MODES[mode].items()})
    args.update(extra)
    return args


@pytest.fixture
def spies(monkeypatch):
    """Record what reaches the backbone loader, the feature extractor and the Trainer's reporting."""
    real_load, real_iter = hf_transfer.training.build.load_backbone, hf_transfer.methods.feature.cache.iter_features

    def load_backbone(model_id, *a, **kw):
        SEEN["load_backbone"] = kw
        return real_load("test_resnet" if model_id == "org/model" else model_id, *a, **kw)

    def iter_features(backbone, dataset, batch_size=256, *a, **kw):
        SEEN.setdefault("feature_batch_size", set()).add(batch_size)
        return real_iter(backbone, dataset, batch_size, *a, **kw)

    def report(report_to):  # the integrations (tensorboard, wandb, ...) are not installed here
        SEEN["report_to"] = report_to
        return []

    monkeypatch.setattr(hf_transfer.training.build, "load_backbone", load_backbone)
    monkeypatch.setattr(hf_transfer.methods.feature.cache, "iter_features", iter_features)
    monkeypatch.setattr(hf_transfer.methods.feature.extract, "iter_features", iter_features)
    monkeypatch.setattr(transformers.trainer, "get_reporting_integration_callbacks", report)


# --- what a built run does, read without training -------------------------------------------------
def optimizer_groups(run):
    opt = run.trainer.create_optimizer()
    return sorted((g["name"], round(g["lr"], 8), g["weight_decay"], len(g["params"])) for g in opt.param_groups)


def trainable(run):
    return sum(p.numel() for p in run.model.parameters() if p.requires_grad)


def first_batch(run):
    torch.manual_seed(0)
    return next(iter(run.trainer.get_train_dataloader()))


def batch_shapes(run):
    return {k: tuple(v.shape) for k, v in first_batch(run).items() if torch.is_tensor(v)}


def train_pixels(run):
    batch = first_batch(run)
    run.model.train()
    torch.manual_seed(0)
    return run.model._prepare(batch["pixel_values"]).sum().item()


def loss(run, progress: float = 0.5):
    """The training loss on the first batch, from randomly moved weights (at init every logit is about
    equal, where e.g. label smoothing changes nothing)."""
    batch = first_batch(run)
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    run.model.train()
    if run.args.mode == "domain":
        run.mode.set_progress(progress)
    torch.manual_seed(0)
    return round(run.model(**batch)["loss"].item(), 6)


def mixed_batch(run):
    """The first training batch as the model mixes it (numpy's RNG: timm's Mixup draws there)."""
    batch = first_batch(run)
    run.model.train()
    np.random.seed(0)
    torch.manual_seed(0)
    out = run.model.prepare_batch(batch)
    return (
        tuple(out["labels"].shape),
        round(out["pixel_values"].sum().item(), 4),
        round(out["labels"].square().sum().item(), 4),
    )


def drop_path_rates(run):
    from timm.layers import DropPath

    return sorted({round(m.drop_prob, 4) for m in run.backbone.model.modules() if isinstance(m, DropPath)})


def transfer_weight(run):
    run.mode.set_progress(0.05)
    return run.mode.trade_off()


def planned_steps(run):
    return run.trainer.set_initial_training_values(run.trainer.args, run.trainer.get_train_dataloader())[-1]


def flow(run, step: int = 1):
    """The Trainer's own decisions after optimizer step ``step`` (evaluate / save / log)."""
    state = TrainerState(global_step=step, max_steps=100)
    state.compute_steps(run.trainer.args, 100)  # as the Trainer does when training starts
    control = run.trainer.callback_handler.on_step_end(run.trainer.args, state, TrainerControl())
    return control.should_evaluate, control.should_save, control.should_log


def weights(run):
    return round(float(sum(p.double().sum() for p in run.backbone.model.parameters())), 6)


def l2sp_penalty(run):
    with torch.no_grad():
        for p in run.backbone.model.parameters():
            p.add_(0.01)
    return round(run.mode.regularizer().item(), 6)


def batchnorm_after_finish(run):
    run.mode.finish(run.model, run.trainer)
    return round(
        sum(m.running_mean.sum().item() for m in run.backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d)), 6
    )


def lora_layers(run):
    """Wrapped modules with their scaling and dropout: what PEFT built from the lora_* options."""
    return sorted(
        (n, float(m.scaling["default"]), type(m.lora_dropout["default"]).__name__, m.r["default"])
        for n, m in run.model.named_modules()
        if hasattr(m, "lora_A") and "default" in m.r
    )


def exported_files(run):
    out = run.training_args.output_dir + "_export"
    run.mode.export(out, {"label_names": run.data.label_names})
    return sorted(os.listdir(out))


def unfreeze_schedule(run):
    run.mode.unfreezing.steps_per_epoch = 3
    return run.mode.unfreezing.unfreeze_steps()


def data_shape(run):
    """Rows per split the mode trains and evaluates on, the classes, and the first evaluation image."""
    first = run.eval_sets["target"][0]
    pixels = first.get("pixel_values", first.get("features"))
    return (
        len(run.trainer.train_dataset),
        {k: len(v) for k, v in run.eval_sets.items()},
        tuple(run.data.label_names),
        hashlib.sha1(torch.as_tensor(pixels).numpy().tobytes()).hexdigest(),
        tuple(run.backbone.data_config.to_dict().items()),
    )


def files_in(folder_key):
    def observe(run):
        folder = {"decoded_cache_dir": run.args.decoded_cache_dir, "feature_cache_dir": run.args.feature_cache_dir}
        folder = folder[folder_key]
        return bool(folder) and os.path.isdir(folder) and bool(os.listdir(folder))

    return observe


def train_input(run):
    """What the Trainer trains on: its dataset's type and whether it has a length (a stream has none)."""
    ds = run.trainer.train_dataset
    return type(ds).__name__, hasattr(ds, "__len__")


def decoded_storage(run):
    """How the training images are stored (format, quality, bytes); feature mode: its feature cache entries."""
    from hf_transfer.data.decoded import DecodedImages

    ds = run.trainer.train_dataset
    parts = [ds, getattr(ds, "source", None), getattr(ds, "target", None)]
    found = [(p.storage_format, p.jpeg_quality, p.stored_bytes) for p in parts if isinstance(p, DecodedImages)]
    return found or sorted(run.mode.cache_files.values())


def seen(key):
    return lambda run: repr(SEEN.get(key))


def model_type(run):
    return (
        type(run.mode).__name__,
        type(run.backbone.model.timm_model).__name__,
        trainable(run),
        type(getattr(run.mode, "transfer_loss", None)).__name__,
    )


def folder_contents(run):
    return sorted(os.listdir(run.training_args.output_dir))


def grl_coefficient(run):
    run.mode.set_progress(0.1)
    return run.mode.transfer_loss.coefficient


def input_kind(run):
    train = getattr(run.trainer.train_dataset, "source", run.trainer.train_dataset)
    return type(train).__name__, run.model.input_transform is None, repr(getattr(run.mode, "cache_files", None))


def extraction_batch_sizes(run):
    """Feature mode extracts while it is built; domain mode measures the domain gap on features."""
    if run.args.mode == "domain":
        run.mode.domain_gap(max_samples=8)
    return sorted(SEEN.get("feature_batch_size", ()))


# --- one probe per field: (values, observe, context per mode) -------------------------------------
@dataclasses.dataclass
class Probe:
    values: tuple
    observe: object
    context: dict = dataclasses.field(default_factory=dict)  # mode -> extra arguments that make the option act
    prepare: object = None  # called with the run arguments before the build (e.g. fill output_dir)
    refused: tuple = ()  # values that must be refused in every mode (a silent fallback would look like an effect)


def _previous_run(args):
    """A folder holding ANOTHER run (what overwrite_output_dir / resume_from_checkpoint are about)."""
    other = {**args, "learning_rate": 0.01, "max_steps": 1, "save_strategy": "steps", "save_steps": 1}
    for key in ("overwrite_output_dir", "resume_from_checkpoint"):
        other.pop(key, None)
    prepare_run(*arguments_from_dict(other)).trainer.train()


def _same_run_checkpoint(args):
    """This same run, trained and checkpointed (then resumed, or refused without resume_from_checkpoint)."""
    run = prepare_run(*arguments_from_dict({k: v for k, v in args.items() if k != "resume_from_checkpoint"}))
    run.trainer.train()


def _write_ranking(args, backbones=None, target=None):
    """The ranking.json that ``ranking`` points at: one by ``hf-transfer rank`` that ranked this run's
    backbone (or ``backbones``) on this run's target (or ``target``)."""
    import json

    path = args.get("ranking")
    if not path or path.endswith("missing.json"):
        return
    backbones = backbones or [args["backbone"], "test_vit"]
    scores = [{"backbone": b, "scores": {"sfda": 1.0 - i, "leep": None}} for i, b in enumerate(backbones)]
    ranking = {"target": "t", "target_spec": target or args["target"], "rank_by": "sfda", "num_images": 8}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**ranking, "ranking": backbones, "candidates": scores}, f)


def ranking_recorded(run):
    return run.ranking and (run.ranking["position"], [c["backbone"] for c in run.ranking["candidates"]])


IMAGE_MODES = ("domain", "task")  # modes that augment and mix images (feature mode trains on cached features)
LORA = {"task": {"method": "lora", "backbone": "{base}"}}
L2SP = {"task": {"regularizer": "l2sp"}}
BSS = {"task": {"regularizer": "bss"}}
PARTIAL = {"domain": {"label_policy": "partial"}}
SAVING = {m: {"save_strategy": "steps", "save_steps": 1} for m in MODES}
HUB_BACKBONE = {m: {"backbone": "org/model"} for m in MODES}
EMA = {m: {"model_ema": True} for m in ("domain", "task")}  # refused in feature mode

PROBES = {
    # what a run is
    "mode": Probe(("task",), model_type),
    "backbone": Probe(("test_efficientnet",), model_type),
    "target": Probe(("{source}",), data_shape),
    "source": Probe(("{source}",), data_shape, {"domain": {"source": "{target}"}}),
    "method": Probe(("linear", "coral"), model_type),
    "method_args": Probe(({"hold": 0.0},), grl_coefficient),
    "backbone_revision": Probe(("v1.0",), seen("load_backbone"), HUB_BACKBONE),
    "trust_remote_code": Probe((True,), seen("load_backbone"), HUB_BACKBONE),
    # data
    "image_column": Probe(("image2",), data_shape),
    "label_column": Probe(("coarse",), data_shape),
    "label_names_column": Probe(("coarse_name",), data_shape, {m: {"label_column": "coarse"} for m in MODES}),
    "label_policy": Probe(("partial",), data_shape, {m: {"source": "{source}"} for m in ("task", "feature")}),
    "target_classes": Probe(("first:2",), data_shape),
    "image_size": Probe((24,), data_shape),
    "crop_pct": Probe((0.5,), data_shape),
    "augment": Probe(("light", "none"), train_pixels),
    "input_path": Probe(("stock",), input_kind),
    # timm's recipe
    "aa": Probe(("rand-m9-mstd0.5-inc1",), train_pixels),
    "reprob": Probe((0.5,), train_pixels),
    "remode": Probe(("const",), train_pixels, {m: {"reprob": 1.0} for m in IMAGE_MODES}),
    "mixup": Probe((0.8,), mixed_batch),
    "cutmix": Probe((1.0,), mixed_batch),
    "mixup_prob": Probe((0.5,), mixed_batch, {m: {"mixup": 0.8} for m in IMAGE_MODES}),
    "mixup_switch_prob": Probe((1.0,), mixed_batch, {m: {"mixup": 0.8, "cutmix": 1.0} for m in IMAGE_MODES}),
    "mixup_mode": Probe(("elem",), mixed_batch, {m: {"mixup": 0.8} for m in IMAGE_MODES}),
    "drop_path": Probe((0.1,), drop_path_rates),
    # feature mode decodes only when it extracts: a fresh feature cache
    "decoded_cache_dir": Probe(
        ("{tmp}/decoded",), files_in("decoded_cache_dir"), {"feature": {"feature_cache_dir": "{tmp}/features_decoded"}}
    ),
    "decode_cache_format": Probe(("jpeg",), decoded_storage),
    "decode_cache_quality": Probe((50,), decoded_storage, {m: {"decode_cache_format": "jpeg"} for m in MODES}),
    "max_train_samples": Probe((8,), data_shape),
    "max_eval_samples": Probe((4,), data_shape),
    "skip_bad_images": Probe((True,), data_shape, {m: {"target": "{corrupt}"} for m in MODES}),
    "streaming": Probe(
        (True,),
        train_input,
        {
            **{m: {"target": "{parquet}"} for m in MODES},
            "domain": {"target": "{parquet}", "source": "{parquet_source}"},
        },
    ),
    # a streamed label column of integer ids without names ("coarse": 0/1)
    "class_names": Probe(
        ("even,odd",),
        lambda run: run.data.label_names,
        {"task": {"streaming": True, "target": "{parquet}", "label_column": "coarse"}},
    ),
    # what trains, at which rate
    "freeze": Probe(("stem",), trainable),
    "backbone_lr_scale": Probe((0.1,), optimizer_groups),
    "layer_decay": Probe((0.5,), optimizer_groups),
    "unfreeze_every": Probe((1,), trainable),
    "unfreeze_unit": Probe(("epochs",), unfreeze_schedule, {"task": {"unfreeze_every": 1}}),
    "regularizer": Probe(("l2sp", "bss"), loss),
    "l2sp_alpha": Probe((1.0,), l2sp_penalty, L2SP),
    "l2sp_beta": Probe((1.0,), loss, L2SP),
    "bss_eta": Probe((1.0,), loss, BSS),
    "bss_k": Probe((2,), loss, BSS),
    "k_shot": Probe((1,), data_shape),
    "lora_r": Probe((2,), lora_layers, LORA),
    "lora_alpha": Probe((32.0,), lora_layers, LORA),
    "lora_dropout": Probe((0.1,), lora_layers, LORA),
    "lora_target_modules": Probe(("conv1",), lora_layers, LORA),
    "publish": Probe(("merged", "adapter", "nothing"), exported_files, LORA, refused=("nothing",)),
    # domain adaptation
    "trade_off": Probe((0.5,), transfer_weight),
    "trade_off_schedule": Probe(("dann",), transfer_weight),
    "trade_off_warmup": Probe((0.5,), transfer_weight, {"domain": {"trade_off_schedule": "linear"}}),
    "bottleneck_dim": Probe((8,), optimizer_groups),
    "target_batch_ratio": Probe((2.0,), batch_shapes),
    "partial_weighting": Probe(
        ("none", "pada"), lambda run: (len(run.trainer.train_dataset.source), sorted(run.model.aux)), PARTIAL
    ),
    "pada_every": Probe(
        (7,),
        lambda run: [getattr(c, "every", None) for c in run.trainer.callback_handler.callbacks],
        {"domain": {"label_policy": "partial", "partial_weighting": "pada"}},
    ),
    "adabn": Probe((True,), batchnorm_after_finish),
    # auto: IM picks in a run that evaluates; another validator, or the last weights
    "checkpoint_selection": Probe(
        ("snd", "last"),
        lambda run: getattr(run.trainer.checkpoint_selection, "validator", None),
        {"domain": {"eval_strategy": "steps", "eval_steps": 1}},
    ),
    # robust fine-tuning: the moving average, the validation split that chooses, WiSE-FT's starting state
    "model_ema": Probe((True,), lambda run: (run.trainer.model_ema is not None, sorted(run.trainer.eval_dataset))),
    "model_ema_decay": Probe((0.5,), lambda run: run.trainer.model_ema.current_decay(5), EMA),
    "model_ema_warmup": Probe((True,), lambda run: run.trainer.model_ema.current_decay(5), EMA),
    "validation_fraction": Probe((0.25,), lambda run: len(run.validation_set), EMA),
    "wise_ft_alpha": Probe(("0.5",), lambda run: run.start_state is not None, {"task": {"method": "lp_ft"}}),
    # speed and caches
    "feature_cache_dir": Probe(("{tmp}/features",), files_in("feature_cache_dir")),
    "feature_dtype": Probe(
        ("float16",),
        lambda run: str(run.trainer.train_dataset.features.dtype),
        {"feature": {"feature_cache_dir": "{tmp}/f16"}},
    ),
    "feature_batch_size": Probe((4,), extraction_batch_sizes, {"feature": {"feature_cache_dir": "{tmp}/features_bs"}}),
    "channels_last": Probe(("false",), lambda run: run.model.channels_last),  # auto: on for this convnet
    "cpu_threads": Probe(("1",), lambda run: torch.get_num_threads()),
    "head_solver": Probe(
        ("lbfgs",),
        lambda run: sorted(run.trainer.train().metrics) and run.trainer.state.log_history[-1],
        {"feature": {"learning_rate": 5e-5}},  # the TrainingArguments default: lbfgs refuses a learning rate
    ),
    "features_on_device": Probe(("true",), lambda run: type(run.trainer.train_dataset).__name__),
    # outputs and the Hub
    "hub_create_pr": Probe(
        (True,),
        lambda run: run.push and run.push.create_pr,
        {m: {"push_to_hub": True, "hub_model_id": "user/model"} for m in MODES},
    ),
    "overwrite_output_dir": Probe((True,), folder_contents, prepare=_previous_run),
    "ranking": Probe(("{tmp}/rank/ranking.json",), ranking_recorded, prepare=_write_ranking),
    # TrainingArguments the README promises to pass through
    "learning_rate": Probe((0.01,), optimizer_groups),
    "weight_decay": Probe((0.1,), optimizer_groups),
    "per_device_train_batch_size": Probe((4,), batch_shapes),
    "seed": Probe((1,), weights),
    "label_smoothing_factor": Probe((0.2,), loss),
    "max_steps": Probe((3, -5, 0), planned_steps, refused=(-5, 0)),
    "num_train_epochs": Probe((2.0, 0.0), planned_steps, {m: {"max_steps": -1} for m in MODES}, refused=(0.0,)),
    "eval_strategy": Probe(("steps",), flow, {m: {"eval_steps": 1} for m in MODES}),
    "save_steps": Probe((1,), flow, {m: {"save_strategy": "steps"} for m in MODES}),
    "bf16": Probe((True,), lambda run: str(run.trainer.accelerator.mixed_precision)),
    "report_to": Probe(("tensorboard",), seen("report_to")),
    "resume_from_checkpoint": Probe(("last",), lambda run: run.resume, SAVING, prepare=_same_run_checkpoint),
}
#: auto_bf16 only acts on a bf16-capable CUDA device: tested below with the device faked
ARGS_ONLY = {"auto_bf16"}
TRAINING_FIELDS = [k for k in PROBES if k not in {f.name for f in dataclasses.fields(TransferArguments)}]


def _fill(value, data, tmp_path):
    return value.format(tmp=tmp_path, **data) if isinstance(value, str) else value


def _build(args: dict, probe: Probe):
    SEEN.clear()
    if probe.prepare is not None:
        probe.prepare(args)
        SEEN.clear()
    return prepare_run(*arguments_from_dict(args))


def _observe(args: dict, probe: Probe):
    """What the probe reads from the built run, or ``("refused", message)``."""
    try:
        run = _build(args, probe)
    except TransferConfigError as err:
        return ("refused", str(err))
    return probe.observe(run)


def test_every_option_changes_the_run_or_is_refused(tmp_path, data, spies):
    fields = {f.name for f in dataclasses.fields(TransferArguments)}
    missing = sorted(fields - set(PROBES) - ARGS_ONLY)
    assert not missing, f"options without a probe here (add one): {missing}"
    effective: dict[str, list] = {}
    for name, probe in PROBES.items():
        for mode in MODES:
            context = {k: _fill(v, data, tmp_path) for k, v in probe.context.get(mode, {}).items()}
            baseline = _resolved(_base(tmp_path, data, mode, **context))
            for value in probe.values:
                value = _fill(value, data, tmp_path)
                if baseline is not None and _same_value(getattr(baseline, name, None), value):
                    continue  # e.g. method=linear in feature mode: what the run does already
                args = _base(tmp_path, data, mode, **{**context, name: value})
                try:
                    after = _observe_or_raise(args, probe)
                except TransferConfigError as err:
                    assert name in str(err), f"{name}={value!r} ({mode}): refused without naming it: {err}"
                    continue
                assert value not in probe.refused, f"{name}={value!r} ({mode}) must be refused"
                before = _observe(_base(tmp_path, data, mode, **context), probe)
                assert after != before, f"{name}={value!r} is accepted and ignored in mode={mode}: {after!r}"
                effective.setdefault(name, []).append((mode, value))
    never = sorted(set(PROBES) - set(effective))
    assert not never, f"options refused in every mode (no probe showed an effect): {never}"
    # the domain recipes' backbone_lr_scale acts in domain mode (it did nothing before)
    assert ("domain", 0.1) in effective["backbone_lr_scale"]
    assert ("domain", 0.2) in effective["label_smoothing_factor"]


def _resolved(args: dict):
    """The parsed arguments (TransferArguments and TrainingArguments fields on one object), or None."""
    try:
        transfer, training = arguments_from_dict(args)
    except TransferConfigError:
        return None
    return type("Resolved", (), {**vars(training), **vars(transfer)})


def _same_value(resolved, value) -> bool:
    return getattr(resolved, "value", resolved) == value


def _observe_or_raise(args: dict, probe: Probe):
    return probe.observe(_build(args, probe))


def test_merge_adapter_is_refused_pointing_to_publish(tmp_path, data):
    with pytest.raises(TransferConfigError, match="merge_adapter is replaced by --publish"):
        arguments_from_dict(_base(tmp_path, data, "task", method="lora", backbone="org/model", merge_adapter=True))


def test_auto_bf16_acts_on_a_bf16_capable_gpu(tmp_path, data, monkeypatch):
    on = arguments_from_dict(_base(tmp_path, data, "task", use_cpu=False))
    off = arguments_from_dict(_base(tmp_path, data, "task", use_cpu=False, auto_bf16=False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert (resolve_precision(*on).bf16, resolve_precision(*off).bf16) == (True, False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_steps": -5}, "max_steps=-5"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"max_steps": -1, "num_train_epochs": 0}, "num_train_epochs=0"),
        ({"mode": "task", "method_args": {"hold": 0.1}}, "method_args"),
        ({"mode": "feature", "backbone_lr_scale": 0.1}, "backbone_lr_scale"),
        ({"backbone_revision": "v1"}, "backbone_revision"),
    ],
)
def test_ignored_options_are_refused_before_any_work(tmp_path, data, monkeypatch, change, message):
    def no_data(*_a, **_k):
        raise AssertionError("the data was loaded before the refusal")

    monkeypatch.setattr(hf_transfer.training.run, "load_transfer_data", no_data)
    with pytest.raises(TransferConfigError, match=message):
        prepare_run(*arguments_from_dict(_base(tmp_path, data, change.pop("mode", "domain"), **change)))


@pytest.mark.parametrize(
    ("ranked", "message"),
    [
        ({"backbones": None, "name": "missing.json"}, "not a ranking.json"),
        ({"backbones": ["test_vit", "test_efficientnet"]}, "did not rank backbone 'test_resnet'"),
        ({"target": "builtin:digits-printed"}, "ranked backbones for target 'builtin:digits-printed'"),
    ],
)
def test_ranking_is_refused_where_it_cannot_act(tmp_path, data, monkeypatch, ranked, message):
    """A card must not claim a ranking that did not choose this backbone for this target."""

    def no_data(*_a, **_k):
        raise AssertionError("the data was loaded before the refusal")

    monkeypatch.setattr(hf_transfer.training.run, "load_transfer_data", no_data)
    args = _base(tmp_path, data, "task", ranking=str(tmp_path / "rank" / ranked.pop("name", "ranking.json")))
    _write_ranking(args, **ranked)
    with pytest.raises(TransferConfigError, match=f"ranking=.*{message}"):
        prepare_run(*arguments_from_dict(args))
