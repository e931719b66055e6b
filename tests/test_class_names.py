"""One rule for class names everywhere: names that are one class under it are refused by every command.

Before: training kept 'Cat' and 'cat' as two classes, ``evaluate`` silently merged them, domain mode refused
them. Now the one rule (:func:`hf_transfer.data.class_names.class_key`) refuses such a dataset when it is
loaded, in every mode and in ``evaluate``, naming the names.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.class_names import check_distinct_class_names, class_key, colliding_names
from hf_transfer.data.load import load_domain, load_split
from hf_transfer.errors import TransferConfigError
from hf_transfer.training.run import run_transfer

from conftest import tiny_args


def _imagefolder(root, classes, per_class: int = 3) -> str:
    """A train/test imagefolder with one folder per class name (Linux keeps 'Cat' and 'cat' apart)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    return str(root)


def _parquet(path, labels) -> str:
    """A parquet file with a string label column (labels become a ClassLabel when loaded)."""
    import io

    import datasets

    def png(k):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), k * 20, np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    ds = datasets.Dataset.from_dict(
        {"image": [png(k) for k in range(len(labels))], "category": labels},
        features=datasets.Features({"image": datasets.Image(), "category": datasets.Value("string")}),
    )
    ds.to_parquet(str(path))
    return str(path)


def test_the_rule():
    assert class_key("Golden_Retriever") == class_key(" golden  retriever ") == class_key("GOLDEN-retriever")
    assert class_key("cat") != class_key("cats")
    assert colliding_names(["Cat", "dog", "cat", "Dog ", "bird"]) == [["Cat", "cat"], ["dog", "Dog "]]
    check_distinct_class_names(["cat", "dog"], "ok")  # distinct names pass


def test_loading_refuses_cat_and_Cat_naming_them(tmp_path):
    folder = _imagefolder(tmp_path / "pets", ["Cat", "cat", "dog"])
    with pytest.raises(TransferConfigError, match=r"'Cat' = 'cat'"):
        load_domain(folder)
    with pytest.raises(TransferConfigError, match=r"'Cat' = 'cat'"):  # what evaluate loads
        load_split(folder, "test")


def test_string_labels_that_differ_by_separator_are_refused(tmp_path):
    path = _parquet(tmp_path / "breeds.parquet", ["Golden_Retriever", "golden retriever", "pug", "pug"])
    with pytest.raises(TransferConfigError, match=r"'category'.*'Golden_Retriever' = 'golden retriever'"):
        load_domain(path)


@pytest.mark.parametrize(
    ("mode", "method", "as_source"),
    [("task", "full", False), ("feature", "linear", False), ("domain", "dann", True), ("domain", "dann", False)],
)
def test_every_mode_refuses_it_before_training(tmp_path, mode, method, as_source):
    folder = _imagefolder(tmp_path / "pets", ["Cat", "cat", "dog"])
    extra = {"source": folder} if as_source else {"target": folder}
    if mode == "domain" and not as_source:
        extra["source"] = _imagefolder(tmp_path / "other", ["cat", "dog"])
    args = tiny_args(tmp_path, mode=mode, method=method, **extra)
    with pytest.raises(TransferConfigError, match=r"'Cat' = 'cat'"):
        run_transfer(*arguments_from_dict(args))


def test_evaluate_refuses_it_instead_of_merging(tmp_path):
    from hf_transfer.cli.evaluate import _parser
    from hf_transfer.evaluation.evaluate import evaluate
    from hf_transfer.models.backbones import load_backbone
    from hf_transfer.models.export import export_model

    model = export_model(load_backbone("test_resnet", ["cat", "dog"], image_size=32, crop_pct=1.0), str(tmp_path / "m"))
    folder = _imagefolder(tmp_path / "pets", ["Cat", "cat", "dog"])
    with pytest.raises(TransferConfigError, match=r"'Cat' = 'cat'"):
        evaluate(_parser().parse_args([model, folder, "--device", "cpu"]))


def test_a_model_naming_one_class_twice_is_said(caplog):
    """The model side of evaluate: two columns of one class (a Hub model's 'Cat' and 'cat', ImageNet's two
    'crane's) are scored as one class, and the log says so, naming them."""
    import logging

    from hf_transfer.evaluation.label_match import match_labels

    with caplog.at_level(logging.WARNING, logger="hf_transfer.evaluation.label_match"):
        match = match_labels("org/pets", ["Cat", "dog", "cat"], "pets", ["cat", "dog"])
    assert match.names == ["Cat", "dog"] and match.column_class == [0, 1, 0]
    assert any("'Cat' = 'cat'" in r.getMessage() and "org/pets" in r.getMessage() for r in caplog.records)
