"""``hf-transfer evaluate``: a finished run re-scored equals its results.json; classes matched by name (partial
overlap, other order); one-line errors; output files and exit codes; the card's "before" row for the base."""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_transfer.cli.evaluate import _parser
from hf_transfer.cli.main import main
from hf_transfer.config import arguments_from_dict
from hf_transfer.data.transforms import eval_transform
from hf_transfer.evaluation.evaluate import OUTPUTS, evaluate, evaluate_base
from hf_transfer.models.backbones import load_backbone
from hf_transfer.models.export import export_model
from hf_transfer.training.run import run_transfer

from conftest import TARGET, tiny_args

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
METRIC_KEYS = ("accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix", "num_samples")


def make_model(folder, labels, bias: dict[str, float] | None = None, seed: int = 0) -> str:
    """A test_resnet classifier (32 px) with these class names, saved as a full model folder."""
    torch.manual_seed(seed)
    backbone = load_backbone("test_resnet", labels, image_size=32, crop_pct=1.0)
    with torch.no_grad():
        for name, value in (bias or {}).items():
            backbone.head.bias[labels.index(name)] = value
    export_model(backbone, str(folder))
    return str(folder)


def eval_args(model, dataset=TARGET, *extra, seed: int | None = 0) -> argparse.Namespace:
    # the tiny runs: seed 0, 32 test images (max_eval_samples); CPU
    seed_args = ["--seed", str(seed)] if seed is not None else []
    return _parser().parse_args([str(model), dataset, *seed_args, "--max_samples", "32", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_run")
    run_transfer(*arguments_from_dict(tiny_args(out, mode="task", method="full", max_steps=6)))
    return next(p for p in out.iterdir() if (p / "results.json").is_file())


@pytest.fixture(scope="module")
def run_results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_evaluate_reproduces_the_runs_own_test_metrics(run_dir, run_results):
    result = evaluate(eval_args(run_dir, seed=None))
    assert result["seed"] == run_results["seed"] == 0  # a run folder's own seed by default
    expected = run_results["metrics"]["target"]
    assert 0.0 < expected["accuracy"] < 1.0  # a model with errors: equality below means something
    assert result["label_names"] == run_results["label_names"] == DIGITS
    for key in METRIC_KEYS:
        assert result["metrics"][key] == expected[key], key
    assert result["model_kind"] == "full" and result["excluded_rows"] == {}
    assert result["data_config"] == run_results["data_config"]  # the run's own preprocessing
    # the stock input path (PIL eval transform) gives the same predictions
    stock = evaluate(eval_args(run_dir, TARGET, "--input_path", "stock", "--batch_size", "5"))
    assert stock["metrics"]["confusion_matrix"] == expected["confusion_matrix"]


def test_published_repos_full_and_adapter_reproduce_the_metrics(run_dir, run_results, tmp_path, hub_server):
    """A run folder pushed as is (a full model, on a branch: --revision) and a LoRA run (its folder, and its
    adapter as a repo whose root has no config.json): all scored equal their runs' results.json."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("user/digits-full")
    api.create_branch("user/digits-full", branch="v1")
    api.upload_folder(folder_path=str(run_dir), repo_id="user/digits-full", revision="v1")
    result = evaluate(eval_args("user/digits-full", TARGET, "--revision", "v1", seed=None))
    assert result["model_kind"] == "full" and result["seed"] == 0
    for key in METRIC_KEYS:
        assert result["metrics"][key] == run_results["metrics"]["target"][key], key

    adapter = tmp_path / "adapter"
    base = make_model(tmp_path / "base", ["cat", "dog"])
    run_transfer(
        *arguments_from_dict(
            tiny_args(tmp_path, mode="task", method="lora", backbone=base, output_dir=str(adapter), lora_r=4)
        )
    )
    folder = adapter / "adapter" if (adapter / "adapter" / "adapter_config.json").is_file() else adapter
    api.create_repo("user/digits-lora")
    api.upload_folder(folder_path=str(folder), repo_id="user/digits-lora", ignore_patterns=["config.json", "merged/*"])
    expected = json.loads((adapter / "results.json").read_text())["metrics"]["target"]
    local = evaluate(eval_args(adapter))  # the run folder itself (its root: the adapter, or the merged model)
    assert local["model_kind"] == ("full" if (adapter / "config.json").is_file() else "adapter")
    result = evaluate(eval_args("user/digits-lora"))
    assert result["model_kind"] == "adapter"
    for key in METRIC_KEYS:
        assert local["metrics"][key] == result["metrics"][key] == expected[key], key


def _stock_logits(model_dir, rows):
    """The model's logits on ``rows`` through the PIL eval transform and a plain forward (no evaluate code)."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    cfg = load_backbone(model_dir, list(model.config.id2label.values())).data_config
    x = torch.stack([eval_transform(cfg)(img.convert("RGB")) for img in rows["image"]])
    with torch.no_grad():
        return model(pixel_values=x).logits.numpy(), [model.config.id2label[i] for i in range(model.num_labels)]


def test_partial_overlap_in_another_order_is_scored_by_name(tmp_path):
    from hf_transfer.data.kshot import subset
    from hf_transfer.data.load import load_split

    # 7 digits in reverse order, "Three"/"seven" spelled otherwise, 3 digits missing, and a class the data lacks
    # with a huge bias: an id-based or unrestricted argmax would be all wrong
    names = ["nine", "eight", "SEVEN", "six", "five", "four", "Three", "zebra"]
    model_dir = make_model(tmp_path / "partial", names, bias={"zebra": 100.0}, seed=3)
    result = evaluate(eval_args(model_dir))

    rows = subset(load_split(TARGET, "test", seed=0), 32, 0)
    logits, model_names = _stock_logits(model_dir, rows)
    truth = [DIGITS[i] for i in rows["label"]]
    known = {"nine", "eight", "seven", "six", "five", "four", "three"}
    shared = [j for j, n in enumerate(model_names) if n.lower() in known]
    keep = [k for k, t in enumerate(truth) if t in known]
    pred = [model_names[shared[int(np.argmax(logits[k, shared]))]].lower() for k in keep]
    correct = sum(p == truth[k] for p, k in zip(pred, keep, strict=True))

    assert result["label_names"] == names[:7]  # the model's order and spelling
    assert result["model_only_classes"] == ["zebra"] and result["dataset_only_classes"] == ["zero", "one", "two"]
    excluded = {n: truth.count(n) for n in ("zero", "one", "two") if truth.count(n)}
    assert result["excluded_rows"] == excluded and sum(excluded.values()) == 32 - len(keep) > 0
    m = result["metrics"]
    assert m["num_samples"] == len(keep)
    assert m["accuracy"] == pytest.approx(correct / len(keep))
    cm = np.asarray(m["confusion_matrix"])
    for p, k in zip(pred, keep, strict=True):
        cm[[n.lower() for n in names[:7]].index(truth[k]), [n.lower() for n in names[:7]].index(p)] -= 1
    assert not cm.any()  # every row in its (true, predicted) cell, by name
    assert m["unrestricted_accuracy"] == 0.0  # over all classes the "zebra" bias wins everywhere


def _cli(capsys, *argv) -> tuple[int, str, str]:
    """Exit code, stdout, and the last stderr line (the error line; log lines come before it)."""
    try:
        rc = main(["evaluate", *map(str, argv)])
    finally:  # the CLI's log handler writes to this test's captured stderr: not to a later test's closed one
        logging.getLogger().handlers.clear()
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return rc, out, (err.strip().splitlines() or [""])[-1]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no_overlap", "share no class name"),
        ("placeholder", "LABEL_0"),
        ("unknown_model", "holds neither config.json"),
        ("unknown_hub_model", "Could not load model 'user/nope'"),
        ("revision_of_a_folder", "--revision 'v1' applies to Hub models"),
        ("bad_spec", "unknown built-in domain"),
        ("missing_split", "no split 'validation'"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, tiny_vit_dir, case, needle):
    model = make_model(tmp_path / "m", ["zebra", "yak"])
    argv = {
        "no_overlap": (model, TARGET),
        "placeholder": (tiny_vit_dir, TARGET),
        "unknown_model": (tmp_path, TARGET),
        "unknown_hub_model": ("user/nope", TARGET),  # offline: the Hub's multi-line message, on one line
        "revision_of_a_folder": (model, TARGET, "--revision", "v1"),
        "bad_spec": (model, "builtin:nope"),
        "missing_split": (model, TARGET, "--split", "validation"),
    }[case]
    rc, out, err = _cli(capsys, *argv, "--output_dir", tmp_path / "eval")
    assert rc == 2, err
    assert err.startswith("hf-transfer: error:") and needle in err, err
    if case == "no_overlap":  # both label lists named
        assert "zebra" in err and "zero" in err
    assert not (tmp_path / "eval").exists()  # refused before anything was written


def test_outputs_written_and_output_dir_refused_unless_overwrite(run_dir, run_results, tmp_path, capsys):
    out = tmp_path / "eval"
    args = (run_dir, TARGET, "--seed", "0", "--max_samples", "32", "--output_dir", out)
    rc, stdout, _ = _cli(capsys, *args)
    assert rc == 0
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["metrics"]["accuracy"] == run_results["metrics"]["target"]["accuracy"]
    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert cm == {"labels": DIGITS, "matrix": run_results["metrics"]["target"]["confusion_matrix"]}
    assert Image.open(out / "confusion_matrix.png").size[0] > 100
    assert f"accuracy {saved['metrics']['accuracy']:.4f}" in stdout and "seven" in stdout

    rc, _, err = _cli(capsys, *args)  # a folder holding files is refused ...
    assert rc == 2 and "--overwrite_output_dir" in err
    (out / "notes.txt").write_text("mine")
    rc, _, _ = _cli(capsys, *args, "--overwrite_output_dir")  # ... unless asked; other files are kept
    assert rc == 0 and (out / "notes.txt").read_text() == "mine"


def _card(folder) -> str:
    return (folder / "README.md").read_text()


def test_card_shows_base_before_adaptation_when_its_labels_overlap(tmp_path):
    base = make_model(tmp_path / "base", DIGITS, seed=1)
    out = tmp_path / "run"
    results = run_transfer(*arguments_from_dict(tiny_args(tmp_path, mode="task", backbone=base, output_dir=str(out))))
    before = results["base_model_evaluation"]
    assert before is not None and before["excluded_rows"] == {}
    # the same numbers as evaluating the base on the run's target test split
    direct = evaluate(eval_args(base))["metrics"]
    for key in METRIC_KEYS:
        assert before["metrics"][key] == direct[key], key
    assert before["this_model_same_rows"]["accuracy"] == results["metrics"]["target"]["accuracy"]
    card = _card(out)
    row = next(line for line in card.splitlines() if line.startswith("| base model before adaptation"))
    assert f"{100 * direct['accuracy']:.1f}%" in row and "†" not in row
    assert "Before adaptation, the base model's own classifier scored" in card
    assert "target (base model, before)" in card  # per-class column
    from huggingface_hub import ModelCard

    evals = ModelCard(card).data.eval_results  # model-index holds this model's results only
    assert evals and {e.metric_value for e in evals if e.metric_type == "accuracy"} == {
        round(results["metrics"][d]["accuracy"], 4) for d in results["metrics"]
    }


def test_card_before_row_on_partial_overlap_names_the_rows(tmp_path):
    base = make_model(tmp_path / "base", DIGITS[:5] + ["zebra"], seed=2)
    out = tmp_path / "run"
    results = run_transfer(*arguments_from_dict(tiny_args(tmp_path, mode="task", backbone=base, output_dir=str(out))))
    before = results["base_model_evaluation"]
    assert set(before["excluded_rows"]) <= set(DIGITS[5:]) and before["excluded_rows"]
    same = before["this_model_same_rows"]
    assert same["num_samples"] == before["metrics"]["num_samples"] < results["metrics"]["target"]["num_samples"]
    card = _card(out)
    assert "| base model before adaptation" in card and "†" in card
    assert f"scored on the {before['metrics']['num_samples']} test images of those classes" in card


def test_no_before_row_without_overlapping_labels(run_dir, run_results, tmp_path, tiny_vit_dir):
    # a random-init timm architecture (the module's run), LABEL_i names, and names that do not overlap
    assert run_results["base_model_evaluation"] is None
    card = _card(run_dir)
    assert "base model before adaptation" not in card and "Before adaptation" not in card
    from hf_transfer.data.load import load_split

    test = load_split(TARGET, "test", seed=0).select(range(8))
    cfg = load_backbone("test_resnet", DIGITS, image_size=32, crop_pct=1.0).data_config
    assert evaluate_base(tiny_vit_dir, test, cfg) is None
    assert evaluate_base(make_model(tmp_path / "other", ["zebra", "yak"]), test, cfg) is None


def test_split_choices(tmp_path):
    """--split: training's test / train splits, or a stored split scored whole; unknown names are one-line errors."""
    import datasets

    from hf_transfer.data.load import load_split
    from hf_transfer.errors import TransferConfigError

    test = load_split(TARGET, "test")
    assert len(load_split(TARGET, "train")) > len(test) > 0
    folder = tmp_path / "local"
    datasets.DatasetDict(
        {"train": test.select(range(20)), "validation": test.select(range(20, 32)), "extra": test.select(range(5))}
    ).save_to_disk(str(folder))
    assert len(load_split(str(folder), "extra")) == 5  # any stored split, whole
    assert len(load_split(str(folder), "test")) == 12  # training's test split: "validation" here
    with pytest.raises(TransferConfigError, match=r"no split 'nope'; splits are \['extra', 'train', 'validation'\]"):
        load_split(str(folder), "nope")
    with pytest.raises(TransferConfigError, match="already names its split"):
        load_split(f"{folder}#train", "extra")


def test_summary_lists_the_weakest_classes_when_there_are_many():
    from hf_transfer.cli.evaluate import format_summary

    names = ["ant", "bee", "cat", "dog", "eel"]
    per_class = [0.9, 0.1, 0.5, None, 0.3]
    cm = np.diag([9, 1, 5, 0, 3]) + 1
    result = {
        "model": "m",
        "model_kind": "full",
        "dataset": "d",
        "split": "test",
        "excluded_rows": {},
        "label_names": names,
        "model_only_classes": [],
        "dataset_only_classes": [],
        "metrics": {
            "num_samples": int(cm.sum()),
            "accuracy": 0.5,
            "macro_f1": 0.4,
            "per_class_accuracy": per_class,
            "confusion_matrix": cm.tolist(),
        },
    }

    def table(text):
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["class", "accuracy"])
        return [line.split()[0] for line in lines[start + 2 :]]

    assert table(format_summary(result)) == names  # all classes, in the model's order
    assert table(format_summary(result, max_classes=2)) == ["bee", "eel"]  # the two weakest


def test_a_name_the_model_repeats_is_one_class():
    """ImageNet heads repeat names ("crane" the bird and the machine): both columns predict that one class."""
    from hf_transfer.evaluation.label_match import match_labels, score

    match = match_labels("m", ["Crane", "zebra", "dog", "crane"], "d", ["dog", "crane", "cat"])
    assert match.names == ["Crane", "dog"] and match.model_only == ["zebra"] and match.dataset_only == ["cat"]
    logits = np.array([[0, 0, 0, 5.0], [0, 9, 1, 0], [3, 0, 1, 0]])  # crane (2nd column), dog (zebra wins), crane
    report = score(logits, np.array([0, 1, 0]), match)
    assert report["confusion_matrix"] == [[2, 0], [0, 1]] and report["accuracy"] == 1.0
    assert report["unrestricted_accuracy"] == pytest.approx(2 / 3)  # over all classes "zebra" takes the dog
