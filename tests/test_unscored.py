"""Data that cannot be scored is said: classes without a test row are counted and named in the log,
results.json, the card and ``hf-transfer evaluate``'s output (before, nothing said so)."""

from __future__ import annotations

import io
import logging
import os

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_transfer.config import arguments_from_dict
from hf_transfer.evaluation.metrics import unscored_classes, unscored_message
from hf_transfer.hub.card_results import unscored_note
from hf_transfer.training.run import run_transfer

from conftest import tiny_args


def _png(seed: int) -> dict:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _parquet_dir(folder, splits: dict[str, list[str]]) -> str:
    """A parquet dataset (one file per split) with a string label column."""
    os.makedirs(folder, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    for split, labels in splits.items():
        ds = datasets.Dataset.from_dict({"image": [_png(i) for i in range(len(labels))], "label": labels}, features)
        ds.to_parquet(os.path.join(folder, f"{split}-00000.parquet"))
    return str(folder)


def test_unscored_helpers():
    assert unscored_classes([0.5, None, 1.0, None], ["a", "b", "c", "d"]) == ["b", "d"]
    msg = unscored_message("target test", [f"c{i}" for i in range(30)], 100)
    assert msg.startswith("30 of 100 classes have no target test row") and "'c19' ... (+10 more)" in msg


@pytest.mark.slow
def test_hundred_classes_of_two_images_say_which_are_not_scored(tmp_path, caplog):
    """The reported case: 100 classes x 2 images (no test split: a 20% hold-out) leaves most classes without
    a test row; the run warns before training, records them and the card names them."""
    labels = [f"kind {k:03d}" for k in range(100) for _ in range(2)]
    folder = _parquet_dir(tmp_path / "hundred", {"train": labels})
    args = tiny_args(tmp_path, mode="task", method="linear", target=folder, max_steps=1, max_eval_samples=None)
    with caplog.at_level(logging.WARNING, logger="hf_transfer.training.build"):
        results = run_transfer(*arguments_from_dict(args))
    per_class = results["metrics"]["target"]["per_class_accuracy"]
    missing = [name for name, acc in zip(results["label_names"], per_class, strict=True) if acc is None]
    assert len(missing) > 50  # 40 test rows for 100 classes
    assert results["unscored_classes"] == {"target": missing}
    warned = [r.getMessage() for r in caplog.records if "cannot be scored" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{len(missing)} of 100 classes have no target test row")
    assert repr(missing[0]) in warned[0]
    card = open(os.path.join(args["output_dir"], "README.md")).read()
    assert f"{len(missing)} of 100 classes have no target test row" in card and repr(missing[0]) in card


def test_card_note_for_a_class_without_test_rows():
    results = {
        "label_names": ["cat", "dog", "owl"],
        "metrics": {"target": {"per_class_accuracy": [0.9, None, 0.5]}, "source": {"per_class_accuracy": [1, 1, 1]}},
    }
    assert unscored_note(results).startswith("1 of 3 classes have no target test row")
    assert "'dog'" in unscored_note(results) and "source" not in unscored_note(results)
    results["metrics"]["target"]["per_class_accuracy"][1] = 0.0
    assert unscored_note(results) == ""


def test_evaluate_names_a_class_with_no_test_rows(tmp_path, caplog):
    from hf_transfer.cli.evaluate import _parser, format_summary
    from hf_transfer.evaluation.evaluate import evaluate
    from hf_transfer.models.backbones import load_backbone
    from hf_transfer.models.export import export_model

    names = ["cat", "dog", "owl"]
    model = export_model(load_backbone("test_resnet", names, image_size=32, crop_pct=1.0), str(tmp_path / "m"))
    folder = _parquet_dir(tmp_path / "pets", {"train": names * 2, "test": ["cat", "owl", "cat", "owl"]})
    with caplog.at_level(logging.WARNING, logger="hf_transfer.evaluation.evaluate"):
        result = evaluate(_parser().parse_args([model, folder, "--device", "cpu"]))
    assert result["unscored_classes"] == ["dog"]
    assert any("1 of 3 classes" in r.getMessage() and "'dog'" in r.getMessage() for r in caplog.records)
    assert "1 of 3 classes have no scored row" in format_summary(result)
