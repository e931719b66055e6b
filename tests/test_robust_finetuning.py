"""Robust fine-tuning: model EMA beside the raw weights, LP-FT's two stages, WiSE-FT's interpolation; each chosen on
the validation split held out of the training split, each surviving a resume, each refused where it cannot act."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_transfer.config import arguments_from_dict
from hf_transfer.errors import TransferConfigError
from hf_transfer.training import robust
from hf_transfer.training.model_ema import EMA_FILE, ModelEma
from hf_transfer.training.run import run_transfer

from conftest import tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "model_cards", "model_card.md")  # this checkout's template, not the installed one
#: a tiny run that learns something in a few steps (AdamW), so that the weights it makes differ
LEARNS = dict(optim="adamw_torch", learning_rate=0.01, per_device_train_batch_size=16, max_steps=6)


class _KillAt(TrainerCallback):
    """A crash right after optimizer step ``step`` (the checkpoint of an earlier step is on disk)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {state.global_step}")


def _run(tmp_path, callbacks=None, **overrides):
    args = tiny_args(tmp_path, mode="task", **{**LEARNS, **overrides})
    return run_transfer(*arguments_from_dict(args), callbacks=callbacks), args["output_dir"]


def _exported(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def _classifier_part(state):
    """The classifier's tensors of a TransferModel state, under the exported model's names."""
    prefix = "classifier.timm_model."  # the export of a timm backbone is timm's own state dict
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# --- model EMA ---------------------------------------------------------------------------------------
def test_ema_is_scored_beside_the_raw_weights_and_the_better_on_validation_is_exported(tmp_path):
    results, out = _run(
        tmp_path,
        model_ema=True,
        model_ema_decay=0.7,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=6,
    )
    logged = {k for entry in results["log_history"] for k in entry}
    for split in ("target", "validation"):  # every evaluation scores the average beside the weights
        assert {f"eval_{split}_accuracy", f"eval_ema_{split}_accuracy"} <= logged
    steps = [e["step"] for e in results["log_history"] if "eval_ema_target_accuracy" in e]
    assert steps == [3, 6]
    ema = results["model_ema"]
    assert (ema["decay"], ema["warmup"]) == (0.7, False)
    scores = ema["accuracy"]
    assert set(scores["ema"]) == set(scores["raw"]) == {"validation", "target"}
    better = "ema" if scores["ema"]["validation"] > scores["raw"]["validation"] else "raw"
    assert ema["exported"] == better
    # the export holds the chosen weights: the average saved with the last checkpoint, or the raw weights
    checkpoint = os.path.join(out, "checkpoint-6")
    chosen = load_file(os.path.join(checkpoint, EMA_FILE if better == "ema" else "model.safetensors"))
    exported = _exported(out)
    for name, value in _classifier_part(chosen).items():
        torch.testing.assert_close(exported[name], value, msg=name)
    # the test numbers of the exported weights are the ones results.json reports as this model's
    assert results["metrics"]["target"]["accuracy"] == scores[better]["target"]
    assert "validation" not in results["metrics"]  # the validation split chooses; it is no test domain
    assert results["validation"] == {"domain": "target", "held_out_of": "target train", "fraction": 0.1, "rows": 32}


class _Scored(torch.nn.Module):
    """A model whose 'accuracy' is its one weight: the EMA choice is made on what scores() returns."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1), requires_grad=False)


@pytest.mark.parametrize("raw_weight, ema_weight, exported", [(0.2, 0.6, "ema"), (0.6, 0.2, "raw"), (0.4, 0.4, "raw")])
def test_the_ema_choice_keeps_the_better_on_validation(monkeypatch, raw_weight, ema_weight, exported):
    model = _Scored()
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        ema.state()["w"].fill_(ema_weight)
        model.w.fill_(raw_weight)
    run = type("Run", (), {"trainer": type("Trainer", (), {"model_ema": ema})()})()
    monkeypatch.setattr(robust, "scores", lambda _run: {"validation": model.w.item(), "target": 1 - model.w.item()})
    record = robust.choose_ema(run)
    assert record["exported"] == exported
    assert model.w.item() == pytest.approx(ema_weight if exported == "ema" else raw_weight)
    assert record["accuracy"]["ema"]["validation"] == pytest.approx(ema_weight)
    assert record["accuracy"]["raw"]["target"] == pytest.approx(1 - raw_weight)


def test_ema_resume_gives_the_same_average_as_an_uninterrupted_run(tmp_path):
    options = dict(model_ema=True, model_ema_decay=0.8, model_ema_warmup=True, save_strategy="steps", save_steps=2)
    full, full_dir = _run(tmp_path, **options)
    crashed = tiny_args(tmp_path, mode="task", **{**LEARNS, **options})
    with pytest.raises(KeyboardInterrupt):
        run_transfer(*arguments_from_dict(crashed), callbacks=[_KillAt(5)])
    assert os.path.isfile(os.path.join(crashed["output_dir"], "checkpoint-4", EMA_FILE))
    resumed = run_transfer(*arguments_from_dict({**crashed, "resume_from_checkpoint": "last"}))
    a = load_file(os.path.join(full_dir, "checkpoint-6", EMA_FILE))
    b = load_file(os.path.join(crashed["output_dir"], "checkpoint-6", EMA_FILE))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["model_ema"] == full["model_ema"]


# --- LP-FT -------------------------------------------------------------------------------------------
class _Gradients(TrainerCallback):
    """Which parameters have a gradient at each optimizer step, the rate the optimizer uses and the scheduled one."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        scheduled = lr_scheduler.get_last_lr()[0]
        self.steps.append((state.global_step, with_grad, optimizer.param_groups[0]["lr"], scheduled))


def test_lp_ft_trains_the_head_alone_before_the_boundary_and_everything_after(tmp_path):
    seen = _Gradients()
    results, _ = _run(
        tmp_path,
        method="lp_ft",
        method_args={"probe_steps": 3, "probe_lr_scale": 4.0},
        callbacks=[seen],
        logging_steps=1,
    )
    assert results["strategies"]["lp_ft"] == {"probe_steps": 3, "probe_lr_scale": 4.0}
    assert [s for s, *_ in seen.steps] == [0, 1, 2, 3, 4, 5]
    head = {n for n in seen.steps[-1][1] if ".fc." in n or ".head." in n}
    assert head
    for step, with_grad, lr, scheduled in seen.steps:
        if step < 3:  # the probe: the head alone, at probe_lr_scale times the scheduled rate
            assert with_grad == head, step
            assert lr == pytest.approx(4.0 * scheduled)
        else:  # fine-tuning: every layer, at the scheduled rate
            assert len(with_grad) > len(head) * 5, step
            assert lr == pytest.approx(scheduled)
    logged = [e["learning_rate"] for e in results["log_history"] if "learning_rate" in e]
    assert len(logged) == 6  # the schedule's own rates are logged: the probe's scaling is undone every step


def test_lp_ft_keeps_batchnorm_statistics_of_the_backbone_during_the_probe(tmp_path):
    class Statistics(TrainerCallback):
        def __init__(self):
            self.means = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            self.means.append(sum(float(m.running_mean.sum()) for m in bn))

    stats = Statistics()
    _run(tmp_path, method="lp_ft", method_args={"probe_steps": 3}, callbacks=[stats])
    assert stats.means[0] == stats.means[1] == stats.means[2]  # probe: the backbone is in eval mode
    assert stats.means[3] != stats.means[2]  # fine-tuning: BatchNorm trains


@pytest.mark.parametrize("kill_at", [3, 5])  # resumed from checkpoint-2 (before the boundary), checkpoint-4 (after)
def test_lp_ft_resume_across_the_boundary_is_exact(tmp_path, kill_at):
    options = dict(method="lp_ft", method_args={"probe_steps": 3}, wise_ft_alpha="0,1", save_strategy="steps")
    full, full_dir = _run(tmp_path, save_steps=2, **options)
    crashed = tiny_args(tmp_path, mode="task", **{**LEARNS, **options, "save_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        run_transfer(*arguments_from_dict(crashed), callbacks=[_KillAt(kill_at)])
    resumed = run_transfer(*arguments_from_dict({**crashed, "resume_from_checkpoint": "last"}))
    a, b = _exported(full_dir), _exported(crashed["output_dir"])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["wise_ft"]["sweep"] == full["wise_ft"]["sweep"]  # alpha=0 holds the same probe head


# --- WiSE-FT -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A trained digits classifier (a run folder): its head already has the target's classes."""
    tmp = tmp_path_factory.mktemp("pretrained")
    _, out = _run(tmp, max_steps=4)
    return out


def test_wise_ft_alpha_0_is_the_start_and_alpha_1_the_fine_tuned_weights(tmp_path, pretrained):
    start = _exported(pretrained)
    common = dict(backbone=pretrained, save_strategy="steps", save_steps=6)
    at_0, out_0 = _run(tmp_path, wise_ft_alpha="0", **common)
    assert at_0["wise_ft"]["alpha_0"] == "the starting backbone with its own pretrained head"
    for name, value in _exported(out_0).items():  # every float tensor is the start's (the zero-shot head too)
        if value.is_floating_point():
            torch.testing.assert_close(value, start[name], msg=name)
    at_1, out_1 = _run(tmp_path, wise_ft_alpha="1", **common)
    finetuned = _classifier_part(load_file(os.path.join(out_1, "checkpoint-6", "model.safetensors")))
    moved = 0
    for name, value in _exported(out_1).items():
        torch.testing.assert_close(value, finetuned[name], msg=name)
        moved += value.is_floating_point() and not torch.equal(value, start[name])
    assert moved  # the fine-tuned weights are not the start


def test_wise_ft_alpha_0_holds_the_lp_ft_probe_head(tmp_path, pretrained):
    results, out = _run(
        tmp_path,
        backbone=pretrained,
        method="lp_ft",
        method_args={"probe_steps": 3},
        wise_ft_alpha="0",
        save_strategy="steps",
        save_steps=4,
    )
    assert results["wise_ft"]["alpha_0"].startswith("the LP-FT probe head")
    probe = load_file(os.path.join(out, "checkpoint-4", "lp_ft_probe_head.safetensors"))
    start, exported = _exported(pretrained), _exported(out)
    head = [k for k in exported if k.endswith(("fc.weight", "fc.bias"))]
    assert len(head) == 2
    for name, value in exported.items():
        if name in head:
            torch.testing.assert_close(value, probe[name.rsplit(".", 1)[-1]], msg=name)
            assert not torch.equal(value, start[name])  # the probe trained it
        elif value.is_floating_point():
            torch.testing.assert_close(value, start[name], msg=name)


def test_wise_ft_sweep_on_every_domain_chosen_on_validation_with_its_plot(tmp_path, pretrained):
    from hf_transfer.hub.cards import write_card

    results, out = _run(tmp_path, backbone=pretrained, wise_ft_alpha="sweep", source="builtin:digits-blended")
    wise = results["wise_ft"]
    assert wise["alphas"] == [round(0.1 * i, 1) for i in range(11)]
    assert [row["alpha"] for row in wise["sweep"]] == wise["alphas"]
    for row in wise["sweep"]:  # the target, the other built-in domain of the same classes, and validation
        assert set(row["accuracy"]) == {"validation", "target", "source"}
    best = max(wise["sweep"], key=lambda row: (row["accuracy"]["validation"], row["alpha"]))
    assert wise["exported_alpha"] == best["alpha"]
    assert results["metrics"]["target"]["accuracy"] == best["accuracy"]["target"]
    assert results["metrics"]["source"]["accuracy"] == best["accuracy"]["source"]
    assert os.path.isfile(os.path.join(out, "wise_ft.png"))
    card = write_card(out, None, template_path=TEMPLATE)
    assert "### Weights chosen on validation" in card and "![WiSE-FT sweep](wise_ft.png)" in card
    assert f"at alpha={wise['exported_alpha']:g}, the best on validation" in card
    assert "| alpha | validation | target test | source test |" in card
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["wise_ft"]["exported_alpha"] == wise["exported_alpha"]


# --- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mode": "feature", "model_ema": True}, "model_ema applies to mode=domain or task only"),
        ({"model_ema_decay": 0.5}, "model_ema_decay=0.5 has no effect .* model_ema=true"),
        ({"model_ema": True, "model_ema_decay": 1.0}, r"model_ema_decay=1.0: must be in \(0, 1\)"),
        ({"validation_fraction": 0.2}, "validation_fraction=0.2 has no effect"),
        ({"model_ema": True, "validation_fraction": 0.9}, r"validation_fraction=0.9: must be in \(0, 0.5\]"),
        ({"mode": "feature", "wise_ft_alpha": "0.5"}, "wise_ft_alpha applies to mode=task only"),
        ({"method": "lora", "wise_ft_alpha": "0.5"}, "wise_ft_alpha='0.5' has no effect .* method=lora"),
        ({"method": "linear", "wise_ft_alpha": "0.5"}, "wise_ft_alpha='0.5' has no effect .* method=linear"),
        ({"method": "lp_ft", "wise_ft_alpha": "1.5"}, r"wise_ft_alpha='1.5': every alpha must be in \[0, 1\]"),
        ({"method": "lp_ft", "wise_ft_alpha": "half"}, "wise_ft_alpha='half': give a number"),
        ({"method": "lp_ft", "unfreeze_every": 2}, r"unfreeze_every=2.0 has no effect .* without schedules_unfreezing"),
        ({"method": "lp_ft", "method_args": {"probe_fraction": 1.5}}, r"probe_fraction=1.5 must be in \(0, 1\)"),
        ({"method": "full", "method_args": {"probe_steps": 2}}, "method_args"),
        ({"method": "lp_ft", "method_args": {"probe_steps": 2, "probe_fraction": 0.3}}, "give one of them"),
    ],
)
def test_refused_before_anything_loads(tmp_path, overrides, message):
    with pytest.raises(TransferConfigError, match=message):
        arguments_from_dict(tiny_args(tmp_path, **{"mode": "task", **overrides}))


def test_refused_where_the_head_at_alpha_0_would_be_random(tmp_path, pretrained, monkeypatch):
    import hf_transfer.training.run

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded before the refusal")

    with monkeypatch.context() as patched:  # a random-init backbone: refused from the arguments, before any loading
        patched.setattr(hf_transfer.training.run, "load_transfer_data", no_loading)
        with pytest.raises(TransferConfigError, match="wise_ft_alpha='0.5': backbone 'test_resnet' starts from random"):
            _run(tmp_path, wise_ft_alpha="0.5")
    # a loaded backbone whose head does not have the target's classes: refused once loaded, before training
    with pytest.raises(TransferConfigError, match="the head at alpha=0 must classify the target's classes"):
        _run(tmp_path, backbone=pretrained, target_classes="first:5", wise_ft_alpha="0.5")


def test_lp_ft_refuses_a_probe_stage_as_long_as_the_run(tmp_path):
    with pytest.raises(TransferConfigError, match="leaves no fine-tuning step"):
        _run(tmp_path, method="lp_ft", method_args={"probe_steps": 6})


# --- DDP -----------------------------------------------------------------------------------------------
@pytest.mark.ddp
def test_ema_and_lp_ft_under_two_process_ddp(tmp_path):
    """accelerate launch --multi_gpu --num_processes 2 on CPU (gloo): the average the main process saved is the one
    exported when it wins, every row is scored once, LP-FT's stages run with masked gradients."""
    import subprocess

    import yaml

    from conftest import two_process_launch

    args = tiny_args(
        tmp_path,
        mode="task",
        **LEARNS,
        method="lp_ft",
        method_args={"probe_steps": 3},
        model_ema=True,
        model_ema_decay=0.7,
        wise_ft_alpha="1",
        save_strategy="steps",
        save_steps=6,
        per_device_eval_batch_size=8,
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(args))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = two_process_launch(os.path.join(ROOT, "recipes", "train.py"), "--config", str(config))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = args["output_dir"]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["hyperparameters"]["world_size"] == 2
    assert sum(map(sum, results["metrics"]["target"]["confusion_matrix"])) == 32  # gathered from both
    assert results["strategies"]["lp_ft"]["probe_steps"] == 3
    assert results["wise_ft"]["exported_alpha"] == 1.0
    checkpoint = os.path.join(out, "checkpoint-6")
    assert os.path.isfile(os.path.join(checkpoint, EMA_FILE))
    # alpha=1: the export is the chosen weights, as the main process saved them
    chosen = EMA_FILE if results["model_ema"]["exported"] == "ema" else "model.safetensors"
    exported = _exported(out)
    for name, value in _classifier_part(load_file(os.path.join(checkpoint, chosen))).items():
        torch.testing.assert_close(exported[name], value, msg=name)


@pytest.mark.parametrize("given", [{"model_ema": True}, {"method": "lp_ft", "wise_ft_alpha": "0.5"}])
def test_sharded_training_is_refused_before_the_run_starts(tmp_path, given):
    from hf_transfer.training.run import prepare_run

    config = {**tiny_args(tmp_path, mode="task"), **given, "fsdp": "full_shard"}
    with pytest.raises(TransferConfigError, match="which FSDP and DeepSpeed shard across processes"):
        prepare_run(*arguments_from_dict(config))
    assert not os.path.exists(config["output_dir"])
