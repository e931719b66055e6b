"""Integer labels without names take them from a companion string column: the layout of Caltech-256's public copy
on the Hub (train / test / validation parquet; ``image``; ``label`` a plain int64; ``text`` each row's class name)."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_transfer.data.load import load_domain
from hf_transfer.errors import TransferConfigError

CLASSES = {0: "ak47", 1: "american-flag", 2: "backpack", 5: "zebra"}  # ids need not be contiguous


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _caltech_layout(root, rows: int = 16, text=None, extra: dict | None = None) -> str:
    """A local copy of that layout: one parquet file per split under data/, as the Hub stores it."""
    ids = list(CLASSES)
    for split in ("train", "test", "validation"):
        labels = [ids[i % len(ids)] for i in range(rows)]
        table = {
            "image": [{"bytes": _png(i), "path": None} for i in range(rows)],
            "label": labels,
            "text": [(text or CLASSES.__getitem__)(y) for y in labels],
            **(extra or {}),
        }
        features = datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.Value("int64"),
                "text": datasets.Value("string"),
                **{k: datasets.Value("string") for k in extra or {}},
            }
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return str(root)


def test_class_names_come_from_the_companion_text_column(tmp_path):
    domain = load_domain(_caltech_layout(tmp_path / "caltech"))
    names = domain["train"].features["label"].names
    assert names == ["ak47", "american-flag", "backpack", "zebra"]  # in the ids' order, not "0", "1", ...
    first = domain["test"][0]
    assert names[first["label"]] == CLASSES[0]


def test_a_column_that_is_not_one_to_one_is_not_used_and_is_refused_when_named(tmp_path):
    # every row's text is its own: not a class name
    path = _caltech_layout(tmp_path / "rows", text=lambda y: f"img-{y}-{np.random.randint(1 << 30)}")
    assert load_domain(path)["train"].features["label"].names == ["0", "1", "2", "5"]
    with pytest.raises(TransferConfigError, match="label names column 'text' does not map 1:1 to label column 'label'"):
        load_domain(path, label_names_column="text")
    with pytest.raises(TransferConfigError, match="label names column 'caption' not found"):
        load_domain(path, label_names_column="caption")


def test_two_candidate_columns_need_label_names_column(tmp_path):
    ids = [list(CLASSES)[i % 4] for i in range(16)]
    path = _caltech_layout(tmp_path / "two", extra={"folder": [f"dir_{y}" for y in ids]})
    assert load_domain(path)["train"].features["label"].names == ["0", "1", "2", "5"]  # ambiguous: ids kept
    named = load_domain(path, label_names_column="folder")["train"].features["label"].names
    assert named == ["dir_0", "dir_1", "dir_2", "dir_5"]
