"""The unsupervised validator picks the weights a domain run keeps, and the card warns of likely negative transfer.

- the callback keeps the best-scoring state (a tie: the earlier step) and restores it; saves and resumes it;
- a real domain run: the kept step is the validator's argmax over the evaluations in ``log_history``, and the
  exported weights score exactly what that evaluation scored;
- ``auto`` resolves to the validator only where it can pick; a named validator is refused where it cannot;
- the negative-transfer verdict and the card's warning, from two runs' recorded scores.
"""

import json
import os

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_transfer.config import arguments_from_dict
from hf_transfer.config.checks import CHECKPOINT_SELECTIONS
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.negative_transfer import negative_transfer, warning_text
from hf_transfer.evaluation.validators import VALIDATORS
from hf_transfer.training.checkpoint_selection import SELECTED_FILE, ValidatorSelection, resolve_selection
from hf_transfer.training.run import run_transfer

from conftest import tiny_args

SOURCE = "builtin:digits-printed"


def test_selections_are_the_validators():
    assert set(CHECKPOINT_SELECTIONS) == {"auto", "last", *VALIDATORS}


def _evaluate(callback, model, step, score, value):
    with torch.no_grad():
        model.weight.fill_(value)
    state = TrainerState()
    state.global_step = step
    callback.on_evaluate(None, state, TrainerControl(), metrics={"eval_target_unlabelled_im": score})


def test_callback_keeps_and_restores_the_best_state(tmp_path):
    model = torch.nn.Linear(2, 2)
    callback = ValidatorSelection(model, "im")
    for step, score, value in [(1, 0.5, 1.0), (2, 0.9, 2.0), (3, 0.9, 3.0), (4, 0.7, 4.0)]:
        _evaluate(callback, model, step, score, value)
    # a checkpoint at step 4 holds the pick and every score; a fresh callback continues from it
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    state = TrainerState()
    state.global_step, state.is_world_process_zero = 4, True
    callback.on_save(TrainingArguments(output_dir=str(tmp_path), report_to="none"), state, TrainerControl())
    assert (folder / SELECTED_FILE).is_file()
    picked = callback.restore(last_step=4)
    assert picked["picked_step"] == 2 and picked["restored"] and picked["last_score"] == 0.7  # the tie kept step 2
    assert torch.all(model.weight == 2.0)
    resumed_model = torch.nn.Linear(2, 2)
    resumed = ValidatorSelection(resumed_model, "im")
    resumed.restore_from(str(folder))
    assert resumed.best_step == 2 and resumed.scores == callback.scores
    resumed.restore(last_step=4)
    assert torch.all(resumed_model.weight == 2.0)
    with pytest.raises(TransferConfigError, match="checkpoint_selection=snd.*resume with --checkpoint_selection im"):
        ValidatorSelection(resumed_model, "snd").restore_from(str(folder))


def test_last_step_best_is_not_a_restore():
    model = torch.nn.Linear(2, 2)
    callback = ValidatorSelection(model, "im")
    _evaluate(callback, model, 1, 0.1, 1.0)
    _evaluate(callback, model, 2, 0.2, 2.0)
    assert callback.restore(last_step=2)["restored"] is False
    assert torch.all(model.weight == 2.0)


@pytest.mark.parametrize(
    "selection, mode, evaluates, ema, trainer_best, expected",
    [
        ("auto", "domain", True, False, False, "im"),
        ("auto", "domain", False, False, False, "last"),  # nothing evaluated: nothing to pick from
        ("auto", "domain", True, True, False, "last"),  # EMA chooses on the labelled validation split
        ("auto", "domain", True, False, True, "last"),  # the Trainer's load_best_model_at_end chooses
        ("auto", "task", True, False, False, "last"),
        ("snd", "domain", True, False, False, "snd"),
    ],
)
def test_auto_resolves_where_a_validator_can_pick(selection, mode, evaluates, ema, trainer_best, expected):
    assert resolve_selection(selection, mode, evaluates, ema, trainer_best) == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mode": "task"}, "checkpoint_selection applies to mode=domain only"),
        ({"eval_strategy": "no"}, "this run evaluates none"),
        ({"model_ema": True}, "both choose the exported weights"),
        ({"checkpoint_selection": "best"}, "choose one of"),
    ],
)
def test_refused_where_it_cannot_pick(tmp_path, overrides, message):
    args = tiny_args(
        tmp_path, mode="domain", method="dann", source=SOURCE, checkpoint_selection="im", eval_strategy="steps"
    )
    args.update(overrides)
    if args["mode"] == "task":
        args.pop("source"), args.pop("method")
    with pytest.raises(TransferConfigError, match=message):
        from hf_transfer.training.run import prepare_run

        prepare_run(*arguments_from_dict(args))


def _domain_run(tmp_path, name, method, **extra):
    args = tiny_args(
        tmp_path,
        mode="domain",
        method=method,
        source=SOURCE,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        output_dir=os.path.join(tmp_path, "seed0", name),
        **extra,
    )
    return run_transfer(*arguments_from_dict(args))


def test_domain_run_keeps_the_validators_pick_and_warns_of_negative_transfer(tmp_path):
    baseline = _domain_run(tmp_path, "source_only", "source_only")
    results = _domain_run(tmp_path, "dann", "dann", learning_rate=0.5)  # a rate this high may well hurt
    selection = results["checkpoint_selection"]
    scored = [
        (e["step"], e["eval_target_unlabelled_im"]) for e in results["log_history"] if "eval_target_unlabelled_im" in e
    ]
    assert [tuple(s) for s in selection["scores"]] == scored and [s for s, _ in scored] == [2, 4, 6]
    best = max(scored, key=lambda s: s[1])  # max keeps the first of a tie, as the callback does
    assert selection["picked_step"] == best[0] and selection["restored"] == (best[0] != 6)
    # the exported weights are the picked ones: scored again after training, they score what that evaluation did
    assert results["target_unlabelled_scores"]["im"] == pytest.approx(best[1], abs=1e-5)
    assert results["model_selection"]["im"]["step"] == best[0]
    # the verdict against the source-only run beside it, recorded and on the card exactly when the scores say so
    check = results["negative_transfer"]
    assert results["negative_transfer_baseline"] == os.path.join("..", "source_only")
    assert check["baseline_score"] == baseline["target_unlabelled_scores"]["im"]
    assert check["likely_worse"] == (check["adapted_score"] < check["baseline_score"])
    card = open(os.path.join(tmp_path, "seed0", "dann", "README.md")).read()
    assert ("Possible negative transfer" in card) == check["likely_worse"]
    saved = json.load(open(os.path.join(tmp_path, "seed0", "dann", "results.json")))
    assert saved["checkpoint_selection"]["picked_step"] == best[0]


def _results(score, accuracy, mode="domain"):
    return {"mode": mode, "target_unlabelled_scores": {"im": score}, "metrics": {"target": {"accuracy": accuracy}}}


def test_negative_transfer_verdict_and_warning():
    baseline = _results(1.0, 0.6)
    worse = negative_transfer(_results(0.8, 0.5), baseline)
    assert worse["likely_worse"] and worse["labelled"] == {"adapted": 0.5, "baseline": 0.6, "worse": True}
    text = warning_text(worse)
    assert "0.800, below the source-only baseline's 1.000" in text and "labels confirm it: 50.0%" in text
    missed = negative_transfer(_results(0.8, 0.7), baseline)  # the validator flags it, the labels do not agree
    assert "labels do not confirm it" in warning_text(missed)
    assert warning_text(negative_transfer(_results(1.2, 0.5), baseline)) is None  # not flagged: no warning
    assert negative_transfer(_results(0.8, 0.5, mode="task"), baseline) is None
    assert negative_transfer(_results(0.8, 0.5), None) is None
    assert negative_transfer({"mode": "domain"}, baseline) is None  # a run from before the scores were recorded


def test_a_pushed_card_keeps_the_recorded_warning():
    """A push without --baseline re-renders the card: the check the run recorded beside its neighbour stays on it."""
    from hf_transfer.evaluation.negative_transfer import recorded_or_new

    recorded = negative_transfer(_results(0.8, 0.5), _results(1.0, 0.6))
    results = {**_results(0.8, 0.5), "negative_transfer": recorded}
    assert recorded_or_new(results, None) == recorded
    assert recorded_or_new(results, _results(0.5, 0.4))["likely_worse"] is False  # a given baseline wins


def test_plan_says_which_weights_the_run_keeps(tmp_path):
    from hf_transfer.training.plan import plan_run

    args = tiny_args(tmp_path, mode="domain", method="dann", source=SOURCE)
    assert plan_run(*arguments_from_dict(args))["training"]["checkpoint_selection"] == "last"  # no evaluation
    evaluated = {**args, "eval_strategy": "steps", "eval_steps": 2}
    assert plan_run(*arguments_from_dict(evaluated))["training"]["checkpoint_selection"] == "im"
