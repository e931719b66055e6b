"""End to end: configs and flags, every mode through the CLI, resume after a kill, 2-process DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from transformers import TrainerCallback

from hf_transfer.cli.main import main as cli_main
from hf_transfer.config import arguments_from_dict, load_config_file, parse_args
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.domain import LOSSES
from hf_transfer.methods.domain.step import SteppedLoss
from hf_transfer.methods.registry import all_methods
from hf_transfer.training.run import run_transfer

from conftest import two_process_launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE, TARGET = "builtin:digits-printed", "builtin:digits-handwritten"
TINY = {
    "backbone": "test_resnet",
    "source": SOURCE,
    "target": TARGET,
    "image_size": 32,
    "crop_pct": 1.0,
    "augment": "light",
    "max_steps": 6,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "max_train_samples": 48,
    "max_eval_samples": 24,
    "use_cpu": True,
    "report_to": "none",
    "eval_strategy": "no",
    "learning_rate": 0.05,
    "optim": "sgd",
    "seed": 3,
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}
MODES = [
    ("feature", "linear", {}),
    ("domain", "dann", {"method_args": {"hold": 0.0}}),
    ("task", "partial", {"freeze": "stem", "backbone_lr_scale": 0.1}),
]

#: every method that owns its training step, resumed with gradient accumulation and clipping on (its passes
#: hold the micro-batches of a step and clip each update)
STEPPED = [
    ("domain", name, {"gradient_accumulation_steps": 2, "max_grad_norm": 0.5, "logging_steps": 1})
    for name, cls in LOSSES.items()
    if issubclass(cls, SteppedLoss)
]
#: every source-free method (no --source: it starts from a trained classifier, the source_only run's folder)
SOURCE_FREE = sorted(name for name, m in all_methods("domain").items() if not m.needs.source_data)


#: timm's recipe: the policy and erasing (python's and torch's RNG), mixup/cutmix (numpy's) and drop-path draw every
#: step; a stepped method mixes once per step (its passes share the batch)
RECIPE = [
    (
        "task",
        "full",
        {
            "augment": "standard",
            "aa": "rand-m9-mstd0.5-inc1",
            "reprob": 0.25,
            "mixup": 0.8,
            "cutmix": 1.0,
            "drop_path": 0.1,
            "label_smoothing_factor": 0.1,
        },
    ),
    ("domain", "sdat", {"mixup": 0.8, "cutmix": 1.0, "gradient_accumulation_steps": 2}),
]


def _config(tmp_path, mode, method, extra, **overrides) -> str:
    cfg = {
        **TINY,
        "mode": mode,
        "method": method,
        **extra,
        "output_dir": str(tmp_path / mode),
        "save_strategy": "steps",
        "save_steps": 2,
        **overrides,
    }
    if mode == "feature":  # no augmentation acts on cached features (refused there)
        cfg.pop("augment")
    path = tmp_path / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "recipes", "configs"))))
def test_every_shipped_config_resolves_to_a_plan_offline(name):
    from hf_transfer.cli.plan import plan_from_argv

    # the plan must not depend on this machine (what `hf-transfer plan --config FILE` resolves)
    plan = plan_from_argv(["--config", os.path.join(ROOT, "recipes", "configs", name)])
    assert plan["mode"] in ("feature", "domain", "task")
    assert plan["datasets"]["target"]["kind"] in ("hub", "builtin", "local")
    if plan["method_plan"].get("source_free"):  # no source: it starts from the source-only run's folder
        assert "source" not in plan["datasets"] and plan["method"] in SOURCE_FREE
        assert plan["method_plan"]["paper"].startswith("https://")
    elif name.startswith(("office", "officehome")):
        assert plan["datasets"]["source"]["kind"] == "hub" and plan["datasets"]["source"]["config"]
        assert plan["backbone"]["kind"] == "timm weights on the Hub"
        assert plan["method_plan"]["paper"].startswith("https://") or plan["method"] == "source_only"
    if "partial" in name:
        assert plan["label_policy"] == "partial" and plan["target_classes"] == "first:25"
    if name.startswith("caltech256"):  # an ImageNet backbone on the Hub copy whose class names are in `text`
        assert plan["datasets"]["target"] == {
            **plan["datasets"]["target"],
            "kind": "hub",
            "name": "ilee0022/Caltech-256",
        }
        assert plan["backbone"]["kind"] == "timm weights on the Hub"
    if name == "caltech256_finetune.yaml":  # timm's recipe, under timm's names
        assert plan["training_recipe"] == {
            "aa": "rand-m9-mstd0.5-inc1",
            "reprob": 0.25,
            "remode": "pixel",
            "mixup": 0.8,
            "cutmix": 1.0,
            "mixup_prob": 1.0,
            "mixup_mode": "batch",
            "mixup_switch_prob": 0.5,
            "soft_targets": True,
            "drop_path": 0.1,
            "label_smoothing": 0.1,
        }


def test_plan_rejects_bad_method_args(tmp_path):
    from hf_transfer.training.plan import plan_run

    path = _config(tmp_path, "domain", "dann", {"method_args": {"hold": 0.1, "alpah": 3}})
    with pytest.raises(TransferConfigError, match="alpah"):
        plan_run(*parse_args(["--config", path]))
    assert cli_main(["plan", "--config", path, "--method", "nope"]) == 2


def test_plan_refuses_unknown_builtin_names(capsys):
    from hf_transfer.data.spec import parse_dataset_spec

    known = "builtin:digits-blended, builtin:digits-handwritten, builtin:digits-printed"
    with pytest.raises(TransferConfigError, match=rf"unknown built-in domain 'digits-handwrittn'.*{known}"):
        parse_dataset_spec("builtin:digits-handwrittn#test")
    argv = [
        "plan",
        "--mode",
        "domain",
        "--method",
        "dann",
        "--backbone",
        "test_resnet",
        "--source",
        "builtin:digits-printd",
        "--target",
        TARGET,
        "--output_dir",
        "unused",
    ]
    assert cli_main(argv) == 2
    assert "unknown built-in domain 'digits-printd'" in capsys.readouterr().err


def test_plan_resolves_a_gpu_recipe_on_any_machine(tmp_path, capsys):
    """A dry run checks the recipe, not this machine: bf16 without a GPU is reported, not raised."""
    from hf_transfer.cli.plan import plan_from_argv

    path = _config(tmp_path, "domain", "dann", {}, use_cpu=False, bf16=True)
    plan = plan_from_argv(["--config", path])
    assert plan["training"]["bf16"] is True and plan["training"]["use_cpu"] is False
    if not torch.cuda.is_available():
        assert plan["training"]["on_this_machine"].startswith("train would stop here:")
        with pytest.raises(TransferConfigError):
            parse_args(["--config", path])  # training itself still refuses, before any work
    assert cli_main(["plan", "--config", path]) == 0
    assert json.loads(capsys.readouterr().out)["method_plan"]["loss"] == "DANNLoss"
    with pytest.raises(TransferConfigError, match="learning_rat"):  # other errors are not hidden by the retry
        plan_from_argv(["--config", path, "--learning_rat", "0.1"])


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "mode": "task", "output_dir": "x", "learning_rat": 0.1}))
    with pytest.raises(TransferConfigError, match=r"unknown key\(s\) \['learning_rat'\]"):
        load_config_file(str(bad))
    with pytest.raises(TransferConfigError, match=r"Unknown argument"):
        arguments_from_dict({**TINY, "mode": "task", "output_dir": "x", "bogus": 1})
    assert cli_main(["train", "--config", str(bad)]) == 2


def test_flags_override_config(tmp_path):
    path = _config(tmp_path, "domain", "dann", {})
    transfer_args, training_args = parse_args(
        [
            "--config",
            path,
            "--learning_rate",
            "0.3",
            "--method",
            "mcc",
            "--method_args",
            '{"temperature": 1.0}',
            "--warmup_steps",
            "0.1",
        ]
    )
    assert training_args.learning_rate == 0.3 and transfer_args.method == "mcc"
    assert transfer_args.method_args == {"temperature": 1.0} and training_args.max_steps == 6
    assert training_args.warmup_steps == 0.1  # every TrainingArguments field is accepted as-is


@pytest.mark.parametrize("mode, method, extra", MODES)
def test_cli_end_to_end_each_mode(tmp_path, mode, method, extra):
    from transformers import pipeline

    path = _config(tmp_path, mode, method, extra, save_strategy="no")
    assert cli_main(["train", "--config", path]) == 0
    out = tmp_path / mode
    results = json.load(open(out / "results.json"))
    assert results["mode"] == mode and results["method"] == method and results["seed"] == 3
    assert set(results["metrics"]) == {"source", "target"}
    for metrics in results["metrics"].values():
        assert {"accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix"} <= set(metrics)
        assert sum(map(sum, metrics["confusion_matrix"])) == 24
    preds = pipeline("image-classification", model=str(out))(str(out / "examples" / "0_eight.png"), top_k=10)
    assert {p["label"] for p in preds} == set(results["label_names"])  # real class names


class _KillAt(TrainerCallback):
    """Simulates a crash right after a step (the checkpoint of the step before is on disk)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {state.global_step}")


def _weights(output_dir):
    from safetensors.torch import load_file

    return load_file(os.path.join(output_dir, "model.safetensors"))


#: the JPEG-stored decode cache: the same bytes decode to the same pixels, so a resume is exact there too
COMPACT = [("domain", "dann", {"method_args": {"hold": 0.0}, "decode_cache_format": "jpeg"})]


@pytest.mark.parametrize("mode, method, extra", MODES + STEPPED + RECIPE + COMPACT)
def test_resume_matches_uninterrupted(tmp_path, mode, method, extra):
    base = {**TINY, "mode": mode, "method": method, **extra, "save_strategy": "steps", "save_steps": 2}
    if mode == "feature":  # feature-mode options are refused in the others, augment is refused here
        base.update(feature_cache_dir=str(tmp_path / "cache"))
        base.pop("augment")
    full = run_transfer(*arguments_from_dict({**base, "output_dir": str(tmp_path / "full")}))
    crashed_dir = str(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        run_transfer(*arguments_from_dict({**base, "output_dir": crashed_dir}), callbacks=[_KillAt(5)])
    assert os.path.isdir(os.path.join(crashed_dir, "checkpoint-4"))
    resumed = run_transfer(*arguments_from_dict({**base, "output_dir": crashed_dir, "resume_from_checkpoint": "last"}))
    assert resumed["metrics"]["target"]["accuracy"] == full["metrics"]["target"]["accuracy"]
    assert resumed["metrics"]["target"]["confusion_matrix"] == full["metrics"]["target"]["confusion_matrix"]
    a, b = _weights(tmp_path / "full"), _weights(crashed_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    if (mode, method, extra) in STEPPED:  # every pass's loss is logged, the same after the resume
        with open(os.path.join(crashed_dir, "checkpoint-6", "trainer_state.json")) as f:
            resumed_log = json.load(f)["log_history"]
        with open(tmp_path / "full" / "checkpoint-6" / "trainer_state.json") as f:
            full_log = json.load(f)["log_history"]
        phases = {k for row in full_log for k in row if k.endswith("_loss") and k not in ("cls_loss", "train_loss")}
        assert len(phases) >= 2, phases  # more than one pass per step, each logged
        last = [{k: v for k, v in row.items() if k in phases} for row in (full_log[-1], resumed_log[-1])]
        assert last[0] == last[1] and set(last[0]) == phases


@pytest.fixture(scope="module")
def source_only_folder(tmp_path_factory) -> str:
    """A tiny source_only run: the classifier the source-free methods adapt."""
    out = tmp_path_factory.mktemp("source_only") / "run"
    base = {**TINY, "mode": "domain", "method": "source_only", "output_dir": str(out), "save_strategy": "no"}
    run_transfer(*arguments_from_dict(base))
    return str(out)


@pytest.mark.parametrize("method", SOURCE_FREE)
def test_source_free_resume_matches_uninterrupted(tmp_path, source_only_folder, method):
    """A source-free method's per-row state (SHOT's pseudo-labels of the epoch, the memory banks) comes back exactly:
    24 target rows in batches of 8 make 3 steps an epoch, so SHOT's pass runs at steps 0 and 3, and the run killed
    at step 5 resumes from checkpoint-4 with the labels of step 3."""
    base = {**TINY, "mode": "domain", "method": method, "backbone": source_only_folder, "max_train_samples": 24}
    base.update(save_strategy="steps", save_steps=2, logging_steps=1)
    del base["source"]
    full = run_transfer(*arguments_from_dict({**base, "output_dir": str(tmp_path / "full")}))
    crashed_dir = str(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        run_transfer(*arguments_from_dict({**base, "output_dir": crashed_dir}), callbacks=[_KillAt(5)])
    resumed = run_transfer(*arguments_from_dict({**base, "output_dir": crashed_dir, "resume_from_checkpoint": "last"}))
    assert resumed["metrics"]["target"]["confusion_matrix"] == full["metrics"]["target"]["confusion_matrix"]
    a, b = _weights(tmp_path / "full"), _weights(crashed_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    losses = [[row["loss"] for row in r["log_history"] if "loss" in row] for r in (full, resumed)]
    assert losses[0][-2:] == losses[1][-2:]  # steps 5 and 6, after the resume


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


#: a training process that holds still once checkpoint-6 is written (marker file first), so that the SIGKILL lands
#: mid-run whatever the machine's load: a poll for the checkpoint raced the remaining steps on a busy machine
_HOLD_AFTER_CHECKPOINT_6 = """
import pathlib, sys, time
from transformers import TrainerCallback
from hf_transfer.config import parse_args
from hf_transfer.training.run import run_transfer

class Hold(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 6:
            pathlib.Path(sys.argv[1]).touch()
            time.sleep(3600)

run_transfer(*parse_args(sys.argv[2:]), callbacks=[Hold()])
"""


@pytest.mark.ddp
def test_kill_dash_nine_and_resume(tmp_path):
    """A real SIGKILL in the middle of a DANN run, then --resume_from_checkpoint last."""
    path = _config(tmp_path, "domain", "dann", {"method_args": {"hold": 0.0}}, max_steps=12, save_steps=3)
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "train.py"), "--config", path]
    marker = tmp_path / "checkpoint-6-written"
    held = [sys.executable, "-c", _HOLD_AFTER_CHECKPOINT_6, str(marker), "--config", path]
    proc = subprocess.Popen(held, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = tmp_path / "domain"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and marker.exists(), proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint-6").is_dir() and not (out / "results.json").exists()
    resumed = subprocess.run(
        cmd + ["--resume_from_checkpoint", "last"], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_transfer(
        *arguments_from_dict({**yaml.safe_load(open(path)), "output_dir": str(tmp_path / "reference")})
    )
    got = json.load(open(out / "results.json"))
    assert got["metrics"]["target"]["confusion_matrix"] == reference["metrics"]["target"]["confusion_matrix"]


@pytest.mark.ddp
@pytest.mark.parametrize("mode, method, extra", [m for m in MODES if m[0] != "domain"])  # domain: below, all methods
def test_two_process_ddp(tmp_path, mode, method, extra):
    """accelerate launch --multi_gpu --num_processes 2 on CPU (gloo): a real 2-process run."""
    path = _config(tmp_path, mode, method, extra, save_strategy="no", max_steps=3)
    cmd = two_process_launch(os.path.join(ROOT, "recipes", "train.py"), "--config", path)
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.load(open(tmp_path / mode / "results.json"))
    assert results["hyperparameters"]["world_size"] == 2
    # metrics gathered from both processes: every test image counted once
    assert sum(map(sum, results["metrics"]["target"]["confusion_matrix"])) == 24
    # one process wrote the outputs: one summary line printed
    assert done.stdout.count("Output:") == 1


@pytest.mark.ddp
def test_feature_cache_sharded_under_two_process_ddp(tmp_path):
    """Each of 2 DDP processes extracts its half of every split; the joined cache equals a 1-process one."""
    import numpy as np

    from hf_transfer.methods.feature.cache import FeatureCache
    from hf_transfer.training.run import prepare_run

    cache = tmp_path / "ddp_cache"
    path = _config(tmp_path, "feature", "linear", {"feature_cache_dir": str(cache)}, save_strategy="no", max_steps=2)
    cmd = two_process_launch(os.path.join(ROOT, "recipes", "train.py"), "--config", path)
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.load(open(tmp_path / "feature" / "results.json"))["hyperparameters"]["world_size"] == 2
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no shard or staging folder left
    # one process, another cache folder: the same keys (the world size is not part of them), same features
    ref = prepare_run(
        *arguments_from_dict(
            {
                **yaml.safe_load(open(path)),
                "feature_cache_dir": str(tmp_path / "ref"),
                "output_dir": str(tmp_path / "ref_out"),
            }
        )
    )
    assert len(ref.mode.cache_files) == 3 and sorted(p.name for p in cache.iterdir()) == sorted(
        os.path.basename(p) for p in ref.mode.cache_files.values()
    )
    for split, ref_path in ref.mode.cache_files.items():
        ddp_path = str(cache / os.path.basename(ref_path))
        meta = FeatureCache.meta(ddp_path)
        n = meta["num_rows"]
        assert meta["world_size"] == 2 and n == (48 if split == "train" else 24)
        # rank r extracted exactly rows [r n / 2, (r + 1) n / 2), in its own process
        assert [(s["rank"], s["start"], s["stop"], s["rows_extracted"]) for s in meta["shards"]] == [
            (0, 0, n // 2, n // 2),
            (1, n // 2, n, n - n // 2),
        ]
        assert len({s["pid"] for s in meta["shards"]}) == 2
        (ddp_f, ddp_y), (one_f, one_y) = FeatureCache.load(ddp_path), FeatureCache.load(ref_path)
        np.testing.assert_allclose(ddp_f, one_f, rtol=1e-5, atol=1e-6, err_msg=split)
        assert np.array_equal(ddp_y, one_y), split


@pytest.mark.ddp
def test_damaged_feature_cache_is_rebuilt_once_under_two_process_ddp(tmp_path):
    """Every entry zeroed on disk after a 2-process run: both processes find the damage on first use, the main
    one removes each entry with one warning naming it, both extract their shards again (no rank reads what
    the other refused, none waits for the other at a barrier) and the second run scores as the first."""
    cache = tmp_path / "ddp_cache"
    runs = []
    for name in ("first", "second"):
        path = _config(
            tmp_path,
            "feature",
            "linear",
            {"feature_cache_dir": str(cache)},
            save_strategy="no",
            max_steps=2,
            output_dir=str(tmp_path / name),
        )
        if name == "second":
            for entry in (p for p in cache.iterdir() if not p.name.startswith(".")):
                features = entry / "features.npy"
                features.write_bytes(features.read_bytes()[:128] + bytes(features.stat().st_size - 128))
        cmd = two_process_launch(os.path.join(ROOT, "recipes", "train.py"), "--config", path)
        runs.append(subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400))
        assert runs[-1].returncode == 0, runs[-1].stderr[-4000:]
    entries = sorted(str(p) for p in cache.iterdir() if not p.name.startswith("."))
    assert len(entries) == 3
    for entry in entries:
        warning = f"The feature cache entry {entry} is damaged or incomplete"
        assert runs[1].stderr.count(warning) == 1, runs[1].stderr[-4000:]
    first, second = (json.load(open(tmp_path / name / "results.json")) for name in ("first", "second"))
    assert second["feature_cache"] == {"hits": 0, "misses": 3}
    assert second["metrics"]["target"]["accuracy"] == first["metrics"]["target"]["accuracy"]
    assert second["metrics"]["target"]["confusion_matrix"] == first["metrics"]["target"]["confusion_matrix"]


@pytest.mark.ddp
def test_every_domain_method_under_two_process_ddp(tmp_path):
    from hf_transfer.methods.domain import LOSSES

    cmd = two_process_launch(os.path.join(ROOT, "tests", "ddp_all_methods.py"), str(tmp_path))
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for method in LOSSES:
        results = json.load(open(tmp_path / method / "results.json"))
        assert results["method"] == method and results["hyperparameters"]["world_size"] == 2
        assert (results["source"] is None) == (method in SOURCE_FREE)
        assert sum(map(sum, results["metrics"]["target"]["confusion_matrix"])) == 16
    shared = json.load(open(tmp_path / "dann_shared_options" / "results.json"))
    assert shared["bottleneck_dim"] == 16 and shared["hyperparameters"]["world_size"] == 2
    assert shared["partial_weighting"]["updates"] == 1  # PADA estimate at step 1 of 2, on both processes


SHARED_OPTIONS = {
    "bottleneck_dim": 16,
    "target_batch_ratio": 1.5,
    "trade_off_schedule": "linear",
    "trade_off_warmup": 0.5,
    "partial_weighting": "pada",
    "pada_every": 2,
}


def test_shared_domain_options_parse_from_yaml_and_flags(tmp_path):
    path = _config(tmp_path, "domain", "dann", SHARED_OPTIONS)
    transfer_args, _ = parse_args(["--config", path])
    for key, value in SHARED_OPTIONS.items():
        assert getattr(transfer_args, key) == value, key
    # trade_off_warmup and pada_every back to their defaults: they act only with the linear schedule and
    # with pada (refused otherwise)
    transfer_args, _ = parse_args(
        [
            "--config",
            path,
            "--trade_off_schedule",
            "dann",
            "--bottleneck_dim",
            "32",
            "--target_batch_ratio",
            "0.5",
            "--partial_weighting",
            "exclude",
            "--trade_off_warmup",
            "0.1",
            "--pada_every",
            "100",
        ]
    )
    assert (
        transfer_args.trade_off_schedule,
        transfer_args.bottleneck_dim,
        transfer_args.target_batch_ratio,
        transfer_args.partial_weighting,
    ) == ("dann", 32, 0.5, "exclude")
    defaults, _ = arguments_from_dict({**TINY, "mode": "domain", "method": "dan", "output_dir": "x"})
    assert (
        defaults.trade_off_schedule,
        defaults.bottleneck_dim,
        defaults.target_batch_ratio,
        defaults.partial_weighting,
    ) == ("constant", None, 1.0, "exclude")
    bad = [
        ({"trade_off_schedule": "cosine"}, "trade_off_schedule='cosine'"),
        ({"trade_off_warmup": 0.0}, "trade_off_warmup"),
        ({"bottleneck_dim": 0}, "bottleneck_dim"),
        ({"target_batch_ratio": -1.0}, "target_batch_ratio"),
        ({"partial_weighting": "soft"}, "partial_weighting='soft'"),
        ({"pada_every": 0}, "pada_every"),
    ]
    for extra, message in bad:
        with pytest.raises(TransferConfigError, match=message):
            parse_args(["--config", _config(tmp_path, "domain", "dann", extra)])
    with pytest.raises(TransferConfigError, match="target_batch_ratio applies to mode=domain only"):
        arguments_from_dict({**TINY, "mode": "task", "output_dir": "x", "target_batch_ratio": 2.0})


def test_resume_matches_uninterrupted_with_shared_domain_options(tmp_path):
    """Bottleneck, batch ratio, trade-off schedule and PADA weights all come back exactly on resume."""
    base = {
        **TINY,
        "mode": "domain",
        "method": "dann",
        "method_args": {"hold": 0.0},
        **SHARED_OPTIONS,
        "save_strategy": "steps",
        "save_steps": 2,
    }
    full = run_transfer(*arguments_from_dict({**base, "output_dir": str(tmp_path / "full")}))
    crashed_dir = str(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        run_transfer(*arguments_from_dict({**base, "output_dir": crashed_dir}), callbacks=[_KillAt(5)])
    resumed = run_transfer(*arguments_from_dict({**base, "output_dir": crashed_dir, "resume_from_checkpoint": "last"}))
    assert full["partial_weighting"]["updates"] == 2  # estimates at steps 2 and 4
    assert resumed["partial_weighting"]["class_weights"] == full["partial_weighting"]["class_weights"]
    assert resumed["metrics"]["target"]["confusion_matrix"] == full["metrics"]["target"]["confusion_matrix"]
    a, b = _weights(tmp_path / "full"), _weights(crashed_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.ddp
def test_learning_rate_auto_under_two_process_ddp(tmp_path):
    """--learning_rate auto under DDP: the range test's loss is averaged over the processes, so both pick the same
    rate (checked across the processes by the run itself, which stops otherwise) and train with it."""
    path = _config(tmp_path, "task", "full", {"learning_rate": "auto"}, save_strategy="no", max_steps=3)
    done = subprocess.run(
        two_process_launch(os.path.join(ROOT, "recipes", "train.py"), "--config", path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.load(open(tmp_path / "task" / "results.json"))
    assert results["hyperparameters"]["world_size"] == 2
    assert "learning_rate auto: range test" in done.stderr  # the main process says what it picked
    assert results["hyperparameters"]["learning_rate"] == results["lr_find"]["picked"]
