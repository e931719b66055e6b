"""Cache entries are checked before use.

An entry damaged on disk after it was written (truncated, zeroed, one byte flipped, or written before the
size/checksum record existed) is found on its first use in a process, removed with a warning naming it and
rebuilt: never an mmap error on every later run, never zeros trained on. ``cache._VERIFIED.clear()``
stands for a new process (a process checks each file once)."""

from __future__ import annotations

import json
import logging
import os

import datasets
import numpy as np
import pytest
import torch

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.decoded import DecodedImages
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.feature.cache import FeatureCache
from hf_transfer.models.backbones import load_backbone
from hf_transfer.runtime import cache as cache_module
from hf_transfer.training.run import run_transfer

from conftest import random_png_dataset, tiny_args

NAMES = ["a", "b", "c"]


def _images(n: int, h: int = 24, w: int = 20) -> datasets.Dataset:
    return random_png_dataset(n, h, w, NAMES, seed=n)


def damage(path: str, how: str) -> None:
    """Damage the file ``path`` (or its entry's record) the way a full disk, a crash or a bad copy does."""
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 2)
    elif how == "zero":
        with open(path, "r+b") as f:
            f.seek(128)  # past the .npy header: the array reads as zeros
            f.write(bytes(size - 128))
    elif how == "flip":
        with open(path, "r+b") as f:
            f.seek(size // 2)
            byte = f.read(1)[0]
            f.seek(size // 2)
            f.write(bytes([byte ^ 0x10]))
    elif how == "no_record":  # an entry whose metadata lacks the record (an older version, or incomplete)
        meta_path = os.path.join(os.path.dirname(path), "meta.json")
        meta = json.load(open(meta_path))
        del meta[cache_module.FILES_RECORD]
        json.dump(meta, open(meta_path, "w"))
    else:
        raise ValueError(how)
    cache_module._VERIFIED.clear()  # what a new process starts with


DAMAGES = ["truncate", "zero", "flip", "no_record"]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_decoded_cache_is_rebuilt_with_a_warning_naming_it(tmp_path, caplog, how):
    ds = _images(12)
    cfg = DataConfig(input_size=(3, 16, 16), crop_pct=1.0)
    first = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    good = np.array(first.images)
    assert good.any() and first.decoded
    del first  # closes the memmap
    damage(str(tmp_path / next(os.walk(tmp_path))[1][0] / "images.npy"), how)
    with caplog.at_level(logging.WARNING, logger="hf_transfer.runtime.cache"):
        again = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    assert again.decoded, "the damaged entry was used instead of being rebuilt"
    assert str(again.path) in caplog.text and "damaged" in caplog.text
    np.testing.assert_array_equal(np.array(again.images), good)
    # the rebuilt entry is good: no warning, no decode
    caplog.clear()
    cache_module._VERIFIED.clear()
    third = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    assert not third.decoded and "damaged" not in caplog.text
    assert sorted(os.listdir(tmp_path)) == [again.path.name]  # nothing left aside


def test_an_entry_checked_once_per_process(tmp_path, monkeypatch):
    """The checksum is read once per process and file: a second construction costs no read."""
    ds = _images(6)
    cfg = DataConfig(input_size=(3, 16, 16), crop_pct=1.0)
    DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    cache_module._VERIFIED.clear()
    reads = []
    real = cache_module.file_checksum
    monkeypatch.setattr(cache_module, "file_checksum", lambda p: reads.append(p) or real(p))
    DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    assert sorted(os.path.basename(p) for p in reads) == ["images.npy", "sizes.npy"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("test_resnet", NAMES, image_size=16, crop_pct=1.0)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_feature_cache_is_rebuilt_with_a_warning_naming_it(tmp_path, caplog, backbone, how):
    ds = _images(10)
    cache = FeatureCache(str(tmp_path / "features"))
    good, labels, path = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
    good = good.clone()
    assert good.abs().sum() > 0
    damage(os.path.join(path, "features.npy"), how)
    with caplog.at_level(logging.WARNING, logger="hf_transfer.runtime.cache"):
        again, again_labels, again_path = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
    assert again_path == path and (cache.hits, cache.misses) == (0, 2)
    assert path in caplog.text and "damaged" in caplog.text
    torch.testing.assert_close(again, good)
    assert torch.equal(again_labels, labels)
    cache_module._VERIFIED.clear()
    cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
    assert cache.hits == 1


def test_a_damaged_entry_that_cannot_be_removed_is_refused_naming_it(tmp_path, monkeypatch):
    ds = _images(6)
    cfg = DataConfig(input_size=(3, 16, 16), crop_pct=1.0)
    entry = DecodedImages(ds, cfg, "eval", cache_dir=tmp_path).path
    damage(str(entry / "images.npy"), "zero")
    real_rename = os.rename

    def read_only_rename(src, dst):
        if str(src) == str(entry):
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst)

    monkeypatch.setattr(cache_module.os, "rename", read_only_rename)
    with pytest.raises(TransferConfigError, match="cannot be removed") as err:
        DecodedImages(ds, cfg, "eval", cache_dir=tmp_path)
    assert str(entry) in str(err.value) and "checksum" in str(err.value)


# -- whole runs: the accuracy comes back --------------------------------------------------------------


def _same_metrics(after: dict, before: dict) -> None:
    """The rebuilt run scores the test split exactly as the first one (accuracy, loss, every number): a
    run on zeroed or missing rows does not (the tiny run's accuracy is near chance, its loss is not)."""
    a, b = after["metrics"]["target"], before["metrics"]["target"]
    assert a.keys() == b.keys() and "accuracy" in a
    for key, value in b.items():
        assert a[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_zeroed_decoded_cache_in_a_run_is_rebuilt_and_the_accuracy_is_unchanged(tmp_path, caplog):
    decoded = str(tmp_path / "decoded")
    args = dict(mode="task", method="full", input_path="fast", decoded_cache_dir=decoded)
    before = run_transfer(*arguments_from_dict(tiny_args(tmp_path, **args)))
    for entry in os.listdir(decoded):  # every split's cache, as a crash of the disk would leave them
        damage(os.path.join(decoded, entry, "images.npy"), "zero")
    with caplog.at_level(logging.WARNING, logger="hf_transfer.runtime.cache"):
        after = run_transfer(*arguments_from_dict(tiny_args(tmp_path, **args)))
    for entry in os.listdir(decoded):
        assert os.path.join(decoded, entry) in caplog.text
    _same_metrics(after, before)


def test_truncated_feature_cache_in_a_run_is_rebuilt_and_the_accuracy_is_unchanged(tmp_path, caplog):
    features = str(tmp_path / "features")
    args = dict(mode="feature", method="linear", feature_cache_dir=features)
    before = run_transfer(*arguments_from_dict(tiny_args(tmp_path, **args)))
    entries = [e for e in os.listdir(features) if not e.startswith(".")]
    assert len(entries) == 2  # train + target test
    for entry in entries:
        damage(os.path.join(features, entry, "features.npy"), "truncate")
    with caplog.at_level(logging.WARNING, logger="hf_transfer.runtime.cache"):
        after = run_transfer(*arguments_from_dict(tiny_args(tmp_path, **args)))
    assert after["feature_cache"] == {"hits": 0, "misses": 2}
    for entry in entries:
        assert os.path.join(features, entry) in caplog.text
    _same_metrics(after, before)


def test_a_damaged_feature_entry_that_cannot_be_removed_is_refused_naming_it(tmp_path, backbone, monkeypatch):
    ds = _images(6)
    cache = FeatureCache(str(tmp_path / "features"))
    _, _, path = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
    damage(os.path.join(path, "labels.npy"), "flip")
    real_rename = os.rename

    def read_only_rename(src, dst):
        if str(src) == path:
            raise PermissionError(13, "Permission denied")
        return real_rename(src, dst)

    monkeypatch.setattr(cache_module.os, "rename", read_only_rename)
    with pytest.raises(TransferConfigError, match="cannot be removed") as err:
        cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
    assert path in str(err.value) and "labels.npy" in str(err.value)
