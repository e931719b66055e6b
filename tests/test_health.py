"""A run's health: a non-finite or exploding loss, non-finite weights or outputs stop the run
with an error naming the step and the loss, before anything is saved from it; the folder is marked and ``push``
refuses it; softer signs (loss ended far above its start, accuracy at chance) are warned about in the log,
results.json and the card; the round-trip check fails on NaN; ``train_loss`` covers the whole run after a resume."""

from __future__ import annotations

import json
import logging
import math
import os
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_transfer.config import arguments_from_dict
from hf_transfer.evaluation.run_health import HEALTH_FILE, divergence_warnings
from hf_transfer.hub.push import PushError, push_run
from hf_transfer.hub.round_trip import RoundTripError, _compare
from hf_transfer.training.checkpoints import resolve_resume
from hf_transfer.training.health_guard import STATE_FILE, TrainingHealthError
from hf_transfer.training.run import run_transfer

from conftest import tiny_args, two_process_launch

SOURCE = "builtin:digits-printed"


def _flags(args: dict) -> list[str]:
    return [part for k, v in args.items() for part in (f"--{k}", str(v))]


def _marker(output_dir) -> dict:
    with open(os.path.join(output_dir, HEALTH_FILE)) as f:
        return json.load(f)


def _stopped(args: dict, callbacks=None) -> tuple[str, dict]:
    """Run ``args``; it must stop for its health. (error message, the folder's stop marker)."""
    with pytest.raises(TrainingHealthError) as err:
        run_transfer(*arguments_from_dict(args), callbacks=callbacks)
    out = args["output_dir"]
    assert not os.path.exists(os.path.join(out, "model.safetensors"))  # nothing exported
    assert not os.path.exists(os.path.join(out, "results.json"))
    return str(err.value), _marker(out)


def _push_refused(output_dir, *expected: str) -> None:
    with pytest.raises(PushError, match="stopped") as err:
        push_run(output_dir, "user/diverged")
    for text in expected:
        assert text in str(err.value), str(err.value)


def test_nan_loss_stops_the_run_names_the_step_keeps_the_last_good_checkpoint_and_push_refuses(tmp_path, capsys):
    """The reported case: --learning_rate 1e38 gave exit 0, NaN tensors, a logged loss of 0 and a push."""
    from hf_transfer.cli.main import main

    args = tiny_args(tmp_path, mode="task", method="full", learning_rate=1e38, save_strategy="steps", save_steps=1)
    rc = main(["train", *_flags(args)])
    err = capsys.readouterr().err
    assert rc != 0
    line = next(x for x in err.splitlines() if x.startswith("hf-transfer: error:"))
    match = re.search(r"TrainingHealthError: Training stopped \((non-finite \w+)\): \w+ step (\d+)", line)
    assert match, line
    step = int(match.group(2))
    marker = _marker(args["output_dir"])
    assert marker["step"] == step and marker["reason"] == match.group(1)
    if marker["reason"] == "non-finite loss":
        assert marker["loss"] in ("nan", "inf", "-inf") and f"the loss is {marker['loss']}" in line
    # every checkpoint before the stop is finite and is the last good one; none was written at or after it
    out = args["output_dir"]
    assert not os.path.exists(os.path.join(out, f"checkpoint-{step}"))
    if step > 1:
        last_good = os.path.join(out, f"checkpoint-{step - 1}")
        assert marker["last_good_checkpoint"] == f"checkpoint-{step - 1}" and last_good in line
        assert resolve_resume("last", out) == last_good
        weights = load_file(os.path.join(last_good, "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())
    _push_refused(out, f"step {step}", HEALTH_FILE)
    rc = main(["push", out, "user/diverged"])
    assert rc != 0 and f"step {step}" in capsys.readouterr().err


def test_exploding_loss_stops_a_task_run(tmp_path):
    """--learning_rate 1e4 (SGD) ended at chance with a loss near 1e10, a card and a push."""
    args = tiny_args(tmp_path, mode="task", method="full", learning_rate=1e4)
    message, marker = _stopped(args)
    assert marker["reason"] == "exploding loss" and marker["loss"] > 1e4
    assert f"at step {marker['step']} the loss" in message and "times the run's first loss" in message
    _push_refused(args["output_dir"], f"step {marker['step']}")


def test_exploding_loss_stops_a_dann_run(tmp_path):
    args = tiny_args(tmp_path, mode="domain", method="dann", source=SOURCE, learning_rate=1e4)
    message, marker = _stopped(args)
    assert marker["reason"] == "exploding loss" and f"step {marker['step']}" in message
    _push_refused(args["output_dir"], f"step {marker['step']}")


class _PoisonWeights(TrainerCallback):
    """NaN into one weight right after the optimizer step of ``step`` (a bad kernel, a bad batch, ...)."""

    def __init__(self, step: int):
        self.step = step

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:  # global_step is incremented after this hook
            with torch.no_grad():
                weight = next(p for p in model.parameters() if p.requires_grad)
                weight[(0,) * weight.dim()] = math.nan
        return control


def test_nonfinite_weights_never_reach_a_checkpoint_and_the_last_good_one_resumes(tmp_path):
    """Own case: the loss so far is finite, the weights are not; checkpoint-2 must not be written."""
    args = tiny_args(tmp_path, mode="task", method="full", save_strategy="steps", save_steps=1)
    message, marker = _stopped(args, callbacks=[_PoisonWeights(2)])
    out = args["output_dir"]
    assert marker["reason"] == "non-finite weights" and marker["step"] == 2
    assert "after step 2 the weights are not finite" in message and "the last step's loss was" in message
    assert marker["last_good_checkpoint"] == "checkpoint-1"
    assert not os.path.exists(os.path.join(out, "checkpoint-2"))
    # the same run resumed from its last good checkpoint finishes healthy: the marker goes, push would be allowed
    results = run_transfer(*arguments_from_dict({**args, "resume_from_checkpoint": "last"}))
    assert not os.path.exists(os.path.join(out, HEALTH_FILE))
    assert results["train_loss_covers"] == "steps 1-4 (the whole run)"


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_feature_head_on_nonfinite_features_stops(tmp_path, monkeypatch, solver):
    """Own case, inf in the input: a feature cache holding an inf. The L-BFGS solve crashed deep in its line
    search ("value cannot be converted to type float without overflow"); the SGD head trained on NaN."""
    from hf_transfer.methods.feature.cache import FeatureCache

    load = FeatureCache.load

    def poisoned(path):
        features, labels = load(path)
        features = features.copy()
        features[0, 0] = math.inf
        return features, labels

    monkeypatch.setattr(FeatureCache, "load", staticmethod(poisoned))
    args = tiny_args(
        tmp_path, mode="feature", method="linear", head_solver=solver, feature_cache_dir=str(tmp_path / "cache")
    )
    if solver == "lbfgs":
        args.pop("learning_rate")  # head_solver=lbfgs refuses one
    message, marker = _stopped(args)
    if solver == "lbfgs":  # checked before the solve, naming the cache entry
        assert marker["reason"] == "non-finite input" and "1 of the 64 cached train feature rows" in message
        assert str(tmp_path / "cache") in message and "delete that cache entry" in message
    else:
        assert marker["reason"] == "non-finite loss" and f"at step {marker['step']} the loss is nan" in message
    _push_refused(args["output_dir"], marker["reason"])


def test_round_trip_check_fails_on_nonfinite_scores(tmp_path):
    """Every comparison with NaN is false: a NaN model and its NaN reference "passed" the tolerance checks."""
    (tmp_path / "a.png").write_bytes(b"")
    nan_ref = [{"file": "a.png", "label": "0", "scores": {"0": math.nan, "1": math.nan}}]

    def nan_model(image, k):
        return [{"label": "0", "score": math.nan}, {"label": "1", "score": math.nan}]

    with pytest.raises(RoundTripError, match="reference scores are not finite"):
        _compare(tmp_path, nan_ref, nan_model, "pipeline", 1e-3)
    finite_ref = [{"file": "a.png", "label": "0", "scores": {"0": 0.9, "1": 0.1}}]

    def inf_model(image, k):
        return [{"label": "0", "score": 0.9}, {"label": "1", "score": math.inf}]

    with pytest.raises(RoundTripError, match=r"exported folder's \(pipeline\) scores are not finite.*'1'=inf"):
        _compare(tmp_path, finite_ref, inf_model, "pipeline", 1e-3)

    def same_model(image, k):
        return [{"label": "0", "score": 0.9}, {"label": "1", "score": 0.1}]

    assert _compare(tmp_path, finite_ref, same_model, "pipeline", 1e-3)[0]["label"] == "0"  # finite: unchanged


def test_divergence_is_warned_in_the_log_results_and_card(tmp_path, caplog):
    """A loss that rose ~80x (below the stop) and accuracy at chance: a finished run, marked as suspect."""
    args = tiny_args(tmp_path, mode="task", method="full", learning_rate=1000)
    with caplog.at_level(logging.WARNING, logger="hf_transfer.training.results"):
        results = run_transfer(*arguments_from_dict(args))
    warnings = results["health"]["warnings"]
    assert any(w.startswith("The training loss ended at") for w in warnings), warnings
    assert results["health"]["loss_end"] > 2 * results["health"]["loss_start"]
    assert "Run health: The training loss ended at" in caplog.text
    with open(os.path.join(args["output_dir"], "results.json")) as f:
        assert json.load(f)["health"]["warnings"] == warnings
    with open(os.path.join(args["output_dir"], "README.md")) as f:
        card = f.read()
    assert "**Warning: this run may have diverged.** The training loss ended at" in card
    assert "Training health: The training loss ended at" in card  # the limitations list


def test_divergence_warnings_on_accuracy_at_chance():
    ten = [[20]] * 10  # only the support (row sums) matters for chance: 10 balanced classes
    at_chance = divergence_warnings(2.3, 2.2, {"accuracy": 0.1, "num_samples": 200, "confusion_matrix": ten}, 10)
    assert len(at_chance) == 1 and "at chance level (10.0%" in at_chance[0]
    assert divergence_warnings(2.3, 0.5, {"accuracy": 0.5, "num_samples": 200, "confusion_matrix": ten}, 10) == []
    # two balanced classes: 60% of 1000 test images is above chance, 52% is not
    two = {"num_samples": 1000, "confusion_matrix": [[3, 0], [0, 3]]}
    assert divergence_warnings(None, None, {**two, "accuracy": 0.6}, 2) == []
    assert divergence_warnings(None, None, {**two, "accuracy": 0.52}, 2)
    # an imbalanced test set: always predicting the common class (90%) is the chance level
    skewed = {"accuracy": 0.9, "num_samples": 100, "confusion_matrix": [[90, 0], [10, 0]]}
    assert "at chance level (90.0%" in divergence_warnings(None, None, skewed, 2)[0]


class _KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {state.global_step}")


def test_resumed_run_reports_the_whole_runs_train_loss(tmp_path):
    """The Trainer's train_loss after a resume covers the resumed steps only; results.json and the card now
    give the whole run's mean, or, resumed from a checkpoint that recorded none, name the steps it covers."""
    base = tiny_args(tmp_path, mode="task", method="full", save_strategy="steps", save_steps=2)
    full = run_transfer(*arguments_from_dict(base))
    assert full["train_loss_covers"] == "steps 1-4 (the whole run)"
    assert full["train_loss"] == pytest.approx(full["log_history"][-1]["train_loss"], rel=1e-6)  # the Trainer's
    for keep_record in (True, False):
        crashed = {**base, "output_dir": str(tmp_path / f"crashed_{keep_record}")}
        with pytest.raises(KeyboardInterrupt):
            run_transfer(*arguments_from_dict(crashed), callbacks=[_KillAt(3)])
        if not keep_record:  # a checkpoint written before the record existed
            os.remove(os.path.join(crashed["output_dir"], "checkpoint-2", STATE_FILE))
        resumed = run_transfer(*arguments_from_dict({**crashed, "resume_from_checkpoint": "last"}))
        trainer_mean = resumed["log_history"][-1]["train_loss"]  # steps 3-4 only
        with open(os.path.join(crashed["output_dir"], "README.md")) as f:
            card = f.read()
        if keep_record:
            assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
            assert resumed["train_loss"] != pytest.approx(trainer_mean, rel=1e-3)
            assert resumed["train_loss_covers"] == "steps 1-4 (the whole run)"
            assert "train loss (mean over steps 1-4 (the whole run))" in card
        else:
            assert resumed["train_loss"] == pytest.approx(trainer_mean, rel=1e-5)
            assert resumed["train_loss_covers"].startswith("steps 3-4 only: resumed at step 2")
            assert "train loss (mean over steps 3-4 only" in card


def test_pending_losses_are_packed_and_read_back_per_step(monkeypatch):
    """A run that never logs keeps one stacked tensor per PACK_EVERY batches; the check reads them back the same:
    micro-batches (gradient accumulation) summed per step, the supervised part where a mode gives one."""
    from types import SimpleNamespace

    import hf_transfer.training.health_guard as guard_module

    monkeypatch.setattr(guard_module, "PACK_EVERY", 2)
    guard = guard_module.HealthGuard(SimpleNamespace(accelerator=SimpleNamespace(num_processes=1)))
    for step, loss, sup in [(1, 0.5, 0.375), (1, 0.5, 0.375), (2, 0.25, None), (2, 0.25, None), (3, 1.0, None)]:
        guard.observe(step, torch.tensor(loss), sup)
    assert len(guard._packed) == 2 and len(guard._losses) == 1
    assert guard._step_losses() == [(1, 1.0, 0.75), (2, 0.5, 0.5), (3, 1.0, 1.0)]  # exact in float32
    assert guard._step_losses() == []  # read once


@pytest.mark.ddp
@pytest.mark.parametrize("learning_rate, reason", [(1e38, "non-finite"), (1e4, "exploding loss")])
def test_two_process_ddp_run_stops_on_every_process(tmp_path, learning_rate, reason):
    """Under DDP the losses are gathered before the verdict, so both processes stop together (a lone raise would
    leave the other waiting in the next collective) and one marker is written."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = tiny_args(tmp_path, mode="task", method="full", learning_rate=learning_rate, per_device_train_batch_size=8)
    cmd = two_process_launch(os.path.join(root, "recipes", "train.py"), *_flags(args))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    marker = _marker(args["output_dir"])
    assert marker["reason"].startswith(reason), marker
    lines = [x for x in done.stderr.splitlines() if x.startswith("hf-transfer: error: TrainingHealthError")]
    assert len(lines) == 2 and all(f"step {marker['step']}" in x for x in lines), done.stderr[-3000:]
