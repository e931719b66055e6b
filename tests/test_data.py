"""Dataset specs, loading from every local form, column detection and label alignment."""

import os

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from hf_transfer.data.align import align_domains
from hf_transfer.data.columns import standardize_columns
from hf_transfer.data.images import to_rgb
from hf_transfer.data.load import load_domain
from hf_transfer.data.paired import PairedDataset, collate_paired
from hf_transfer.data.spec import DatasetSpec, parse_dataset_spec
from hf_transfer.errors import TransferConfigError


def _img(value: int, mode: str = "RGB", size: int = 12) -> PILImage.Image:
    arr = np.full((size, size, 3), value, dtype=np.uint8)
    img = PILImage.fromarray(arr, "RGB")
    return img.convert(mode) if mode != "RGB" else img


def _dataset(
    names: list[str], per_class: int = 4, label_col: str = "label", img_col: str = "image", as_strings: bool = False
) -> Dataset:
    images, labels = [], []
    for i, name in enumerate(names):
        for j in range(per_class):
            images.append(_img(10 * i + j))
            labels.append(name if as_strings else i)
    label_feat = Value("string") if as_strings else ClassLabel(names=names)
    return Dataset.from_dict(
        {img_col: images, label_col: labels}, features=Features({img_col: Image(), label_col: label_feat})
    )


# --- specs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("org/name", DatasetSpec("hub", "org/name")),
        ("org/name:cfg@v1.0#test", DatasetSpec("hub", "org/name", "cfg", "v1.0", "test")),
        ("org/name@refs/pr/1", DatasetSpec("hub", "org/name", revision="refs/pr/1")),
        ("cifar10", DatasetSpec("hub", "cifar10")),
        ("builtin:digits-printed", DatasetSpec("builtin", "digits-printed")),
        ("builtin:digits-printed#train", DatasetSpec("builtin", "digits-printed", split="train")),
    ],
)
def test_parse_spec(text, expected):
    assert parse_dataset_spec(text) == expected


def test_parse_spec_local_and_errors(tmp_path):
    spec = parse_dataset_spec(str(tmp_path) + "#train")
    assert spec.kind == "local" and spec.name == str(tmp_path) and spec.split == "train"
    with pytest.raises(TransferConfigError, match="does not exist"):
        parse_dataset_spec("./no/such/folder")
    with pytest.raises(TransferConfigError, match="empty revision"):
        parse_dataset_spec("org/name@")
    with pytest.raises(TransferConfigError, match="builtin"):
        parse_dataset_spec("builtin:")
    with pytest.raises(TransferConfigError, match="neither"):
        parse_dataset_spec("org/na me")


# --- local forms --------------------------------------------------------------------------------


def test_load_save_to_disk_folder(tmp_path):
    names = ["cat", "dog"]
    DatasetDict(train=_dataset(names), test=_dataset(names, 2)).save_to_disk(tmp_path / "ds")
    dsd = load_domain(str(tmp_path / "ds"))
    assert set(dsd) == {"train", "test"} and len(dsd["test"]) == 4
    assert dsd["train"].features["label"].names == names
    assert dsd["train"][0]["image"].mode == "RGB"


def test_load_parquet_folder_with_split_names(tmp_path):
    names = ["a", "b"]
    os.makedirs(tmp_path / "pq")
    _dataset(names).to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    _dataset(names, 2).to_parquet(str(tmp_path / "pq" / "test-00000.parquet"))
    dsd = load_domain(str(tmp_path / "pq"))
    assert len(dsd["train"]) == 8 and len(dsd["test"]) == 4


def test_load_imagefolder_and_holdout_split(tmp_path):
    for cls in ("alpha", "beta"):
        os.makedirs(tmp_path / "imgs" / cls)
        for j in range(10):
            _img(j * 7, "L").save(tmp_path / "imgs" / cls / f"{j}.png")
    dsd = load_domain(str(tmp_path / "imgs"), test_size=0.2, seed=0)
    assert dsd["train"].features["label"].names == ["alpha", "beta"]
    assert len(dsd["train"]) == 16 and len(dsd["test"]) == 4
    # stratified: both classes in the held-out split
    assert sorted(set(dsd["test"]["label"])) == [0, 1]
    assert dsd["train"][0]["image"].mode == "L"  # decoded in the file's mode; every input path converts it
    assert to_rgb(dsd["train"][0]["image"]).mode == "RGB"


def test_load_spec_split_restricts(tmp_path):
    names = ["a", "b"]
    DatasetDict(train=_dataset(names, 10), test=_dataset(names, 2)).save_to_disk(tmp_path / "ds")
    dsd = load_domain(f"{tmp_path / 'ds'}#test", test_size=0.5)
    assert len(dsd["train"]) + len(dsd["test"]) == 4
    with pytest.raises(TransferConfigError, match="no split 'validation'"):
        load_domain(f"{tmp_path / 'ds'}#validation")


def test_hub_spec_fails_offline_with_named_repo():
    with pytest.raises(TransferConfigError, match="some-org/missing-dataset"):
        load_domain("some-org/missing-dataset")


# --- columns ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "I;16"])
def test_image_modes_become_rgb(mode):
    """The column keeps the file's mode; :func:`to_rgb` (what every input path calls) makes it RGB, 16-bit
    greyscale from its 16-bit range (tests/test_image_modes.py), so here the picture keeps its grey levels."""
    img = _img(100)
    img = img.convert(mode) if mode != "I;16" else img.convert("L").convert("I;16")
    ds = Dataset.from_dict(
        {"picture": [img], "category": ["x"]}, features=Features({"picture": Image(), "category": Value("string")})
    )
    out = standardize_columns(DatasetDict(train=ds), "test")
    rgb = to_rgb(out["train"][0]["image"])
    assert rgb.mode == "RGB"
    if mode in ("L", "I;16"):  # "I;16" made from L holds 100 of 65535: near black (Pillow's convert gave 100)
        assert np.asarray(rgb).max() == (100 if mode == "L" else round(100 / 257))
    assert out["train"].features["label"] == ClassLabel(names=["x"])


def test_column_detection_renames_and_converts_labels():
    ds = _dataset(["b", "a"], label_col="target", img_col="img", as_strings=True)
    ds = ds.add_column("extra", list(range(len(ds))))
    out = standardize_columns(DatasetDict(train=ds), "test")
    assert set(out["train"].column_names) == {"image", "label"}
    assert out["train"].features["label"].names == ["a", "b"]  # sorted, as imagefolder does
    # the row that said "b" still says "b"
    assert out["train"].features["label"].int2str(out["train"][0]["label"]) == "b"


def test_int_labels_become_classlabel():
    ds = Dataset.from_dict(
        {"image": [_img(1), _img(2)], "label": [3, 7]}, features=Features({"image": Image(), "label": Value("int64")})
    )
    out = standardize_columns(DatasetDict(train=ds), "test")
    assert out["train"].features["label"].names == ["3", "7"]
    assert out["train"]["label"][:] == [0, 1]


def test_column_errors_name_the_columns():
    two_images = Dataset.from_dict(
        {"a": [_img(1)], "b": [_img(2)], "label": [0]},
        features=Features({"a": Image(), "b": Image(), "label": ClassLabel(names=["x"])}),
    )
    with pytest.raises(TransferConfigError, match=r"several image columns \['a', 'b'\]"):
        standardize_columns(DatasetDict(train=two_images), "test")
    assert standardize_columns(DatasetDict(train=two_images), "test", image_column="b")["train"].num_rows == 1

    no_label = Dataset.from_dict(
        {"image": [_img(1)], "caption": ["hi"]}, features=Features({"image": Image(), "caption": Value("string")})
    )
    with pytest.raises(TransferConfigError, match="no label column found.*caption"):
        standardize_columns(DatasetDict(train=no_label), "test")
    assert "label" not in standardize_columns(DatasetDict(train=no_label), "t", require_labels=False)["train"].features

    with pytest.raises(TransferConfigError, match="label column 'klass' not found"):
        standardize_columns(DatasetDict(train=two_images), "test", image_column="a", label_column="klass")

    two_labels = Dataset.from_dict(
        {"image": [_img(1)], "l1": [0], "l2": [0]},
        features=Features({"image": Image(), "l1": ClassLabel(names=["x"]), "l2": ClassLabel(names=["y"])}),
    )
    with pytest.raises(TransferConfigError, match=r"several ClassLabel columns \['l1', 'l2'\]"):
        standardize_columns(DatasetDict(train=two_labels), "test")

    no_image = Dataset.from_dict({"pixels": [[1, 2]], "label": [0]})
    with pytest.raises(TransferConfigError, match="no image column found"):
        standardize_columns(DatasetDict(train=no_image), "test")


# --- alignment ----------------------------------------------------------------------------------


def _labelled_names(dsd, split="train"):
    feat = dsd[split].features["label"]
    return [feat.int2str(i) for i in dsd[split]["label"]]


def test_align_by_name_not_id():
    source = DatasetDict(train=_dataset(["cat", "dog", "bird"]), test=_dataset(["cat", "dog", "bird"], 1))
    # same classes, different ids and spelling
    target = DatasetDict(train=_dataset(["Bird", "CAT", "dog"]), test=_dataset(["Bird", "CAT", "dog"], 1))
    before = [n.lower() for n in _labelled_names(target)]
    aligned = align_domains(source, target)
    assert aligned.label_names == ["cat", "dog", "bird"]
    assert aligned.target["train"].features["label"] == aligned.source["train"].features["label"]
    assert [n.lower() for n in _labelled_names(aligned.target)] == before  # every row keeps its class
    assert aligned.report.setting == "closed-set"


def test_align_partial_overlap_shared_policy():
    source = DatasetDict(train=_dataset(["a", "b", "c"]), test=_dataset(["a", "b", "c"], 1))
    target = DatasetDict(train=_dataset(["c", "d", "a"]), test=_dataset(["c", "d", "a"], 1))
    aligned = align_domains(source, target, policy="shared")
    assert aligned.label_names == ["a", "c"]
    assert aligned.report.source_only == ["b"] and aligned.report.target_only == ["d"]
    assert aligned.report.dropped_rows == {"source": {"train": 4, "test": 1}, "target": {"train": 4, "test": 1}}
    assert set(_labelled_names(aligned.target)) == {"a", "c"}
    assert len(aligned.target["train"]) == 8


def test_align_partial_setting_keeps_source_classes():
    source = DatasetDict(train=_dataset(["a", "b", "c"]), test=_dataset(["a", "b", "c"], 1))
    target = DatasetDict(train=_dataset(["c", "a"]), test=_dataset(["c", "a"], 1))
    aligned = align_domains(source, target, policy="partial")
    assert aligned.label_names == ["a", "b", "c"] and aligned.report.setting == "partial"
    assert len(aligned.source["train"]) == 12
    assert sorted(set(_labelled_names(aligned.target))) == ["a", "c"]
    with pytest.raises(TransferConfigError, match=r"target only: \['d'\]"):
        align_domains(source, DatasetDict(train=_dataset(["a", "d"]), test=_dataset(["a", "d"], 1)), "partial")


def test_align_errors():
    source = DatasetDict(train=_dataset(["a", "b"]))
    with pytest.raises(TransferConfigError, match="share no class name"):
        align_domains(source, DatasetDict(train=_dataset(["x", "y"])))
    with pytest.raises(TransferConfigError, match="strict"):
        align_domains(source, DatasetDict(train=_dataset(["a"])), policy="strict")
    with pytest.raises(TransferConfigError, match="Unknown label policy"):
        align_domains(source, source, policy="fuzzy")


def test_builtin_spec_loads_through_load_domain():
    dsd = load_domain("builtin:digits-handwritten")
    assert set(dsd) == {"train", "test"}
    assert dsd["train"].features["label"].names[0] == "zero"
    with pytest.raises(TransferConfigError, match="digits-printed"):
        load_domain("builtin:nope")


def test_open_set_target_only_classes_are_listed_and_excluded_with_a_warning(caplog):
    source = DatasetDict(train=_dataset(["a", "b", "c"]), test=_dataset(["a", "b", "c"], 1))
    target = DatasetDict(train=_dataset(["a", "b", "c", "unknown"]), test=_dataset(["a", "b", "c", "unknown"], 1))
    with caplog.at_level("WARNING", logger="hf_transfer.data.align"):
        aligned = align_domains(source, target)
    assert aligned.report.setting == "open-set" and aligned.report.target_only == ["unknown"]
    assert aligned.label_names == ["a", "b", "c"]
    assert aligned.report.dropped_rows["target"] == {"train": 4, "test": 1}
    for split in ("train", "test"):  # no row of the unseen class is left, in training or evaluation
        assert "unknown" not in set(_labelled_names(aligned.target, split))
    assert any("target only: ['unknown']" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


# --- paired batches: target images per source image ------------------------------------------------


class _Tensors:
    def __init__(self, n, offset, labels=True):
        self.n, self.offset, self.labels = n, offset, labels

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        item = {"pixel_values": torch.full((3, 2, 2), float(self.offset + i))}
        if self.labels:
            item["labels"] = i % 3
        return item


@pytest.mark.parametrize("ratio, expected", [(1.0, 8), (0.5, 4), (1.5, 12), (2.0, 16), (3.0, 24), (0.01, 1)])
def test_paired_batches_have_the_requested_target_count(ratio, expected):
    paired = PairedDataset(_Tensors(40, 0), _Tensors(30, 1000, labels=False), target_ratio=ratio)
    batch = collate_paired([paired[i] for i in range(8)], ratio)
    assert batch["pixel_values"].shape == (8, 3, 2, 2) and batch["labels"].shape == (8,)
    assert batch["target_pixel_values"].shape == (expected, 3, 2, 2)
    assert (batch["target_pixel_values"] >= 1000).all() and (batch["pixel_values"] < 1000).all()


def test_paired_ratio_keeps_one_epoch_over_every_image():
    source, target = _Tensors(10, 0), _Tensors(30, 1000, labels=False)
    one = PairedDataset(source, target)  # ratio 1: the original layout
    assert len(one) == 30 and [one.target_index(i) for i in range(3)] == [0, one.stride, 2 * one.stride % 30]
    two = PairedDataset(source, target, target_ratio=2.0)
    assert len(two) == 15  # half as many items, two target images each
    seen = {int(v) for i in range(len(two)) for v in two[i]["target_pixel_values"][:, 0, 0, 0]}
    assert seen == set(range(1000, 1030))  # every target image once per epoch
    with pytest.raises(ValueError, match="target_ratio"):
        PairedDataset(source, target, target_ratio=0.0)


def test_select_classes_keeps_rows_and_declares_only_the_kept_names():
    from hf_transfer.data.builtin import load_builtin
    from hf_transfer.data.classes import select_classes

    dsd = load_builtin("digits-handwritten")
    names = dsd["train"].features["label"].names
    first = select_classes(dsd, "first:5")
    for split in dsd:
        assert first[split].features["label"].names == names[:5]
        labels = np.asarray(first[split]["label"])
        assert labels.max() == 4 and len(labels) == int((np.asarray(dsd[split]["label"]) < 5).sum())
    picked = select_classes(dsd, " Seven, two ")
    assert picked["test"].features["label"].names == ["seven", "two"]
    old = np.asarray(dsd["test"]["label"])
    new = np.asarray(picked["test"]["label"])
    assert len(new) == int(np.isin(old, [7, 2]).sum())
    assert [names[i] for i in old[np.isin(old, [7, 2])]] == [["seven", "two"][i] for i in new]  # remapped, same order
    assert select_classes(dsd, None) is dsd
    for bad, match in (("first:0", "1..10"), ("first:x", "integer"), ("seven, tree", "tree")):
        with pytest.raises(TransferConfigError, match=match):
            select_classes(dsd, bad)
