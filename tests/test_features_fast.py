"""The fast feature-extraction path (hf_transfer.methods.feature.cache, input_path="fast").

Correctness, never speed: the features from the decoded uint8 cache + on-device normalisation equal
the stock PIL eval path within float tolerance (on images that need the resize + center crop and on
images already at the input size), labels are the same, and the feature cache keeps the two input
paths apart.
"""

from __future__ import annotations

import io
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.feature.cache import FeatureCache, cache_key
from hf_transfer.methods.feature.extract import extract_features
from hf_transfer.models.backbones import load_backbone

NAMES = ["a", "b", "c"]


def _images(n: int, h: int, w: int, seed: int = 0) -> datasets.Dataset:
    """``n`` structured RGB JPEGs of ``h x w`` (ramps, a disk, noise) with labels ``i % 3``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cells = []
    for k in range(n):
        arr = np.stack([255 * xx / (w - 1), 255 * yy / (h - 1), 128 + 60 * np.sin(xx / (3 + k) + yy / 7)], -1)
        disk = (xx - rng.uniform(0, w)) ** 2 + (yy - rng.uniform(0, h)) ** 2 < (0.25 * min(h, w)) ** 2
        arr[disk] = rng.uniform(0, 255, 3)
        arr += rng.normal(0, 8, arr.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        cells.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"image": cells, "label": [k % 3 for k in range(n)]}, features=features)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("test_resnet", NAMES, image_size=32, crop_pct=0.875)


@pytest.mark.parametrize("hw", [(45, 60), (32, 32)], ids=["resize+crop", "at-size"])
def test_fast_features_equal_stock(backbone, tmp_path, hw):
    ds = _images(10, *hw)
    stock_f, stock_y = extract_features(backbone, ds, batch_size=4)
    fast_f, fast_y = extract_features(
        backbone, ds, batch_size=4, input_path="fast", decoded_cache_dir=str(tmp_path / "decoded")
    )
    assert fast_f.shape == stock_f.shape == (10, backbone.feature_dim)
    assert torch.equal(fast_y, stock_y) and stock_y.tolist() == [k % 3 for k in range(10)]
    torch.testing.assert_close(fast_f, stock_f, rtol=1e-4, atol=1e-5)
    # a second call reads the decoded cache and gives the same features
    again, _ = extract_features(
        backbone, ds, batch_size=3, input_path="fast", decoded_cache_dir=str(tmp_path / "decoded")
    )
    torch.testing.assert_close(again, fast_f, rtol=1e-5, atol=1e-6)


def test_fast_features_without_labels(backbone, tmp_path):
    ds = _images(5, 40, 40).remove_columns("label")
    feats, labels = extract_features(
        backbone, ds, batch_size=2, input_path="fast", decoded_cache_dir=str(tmp_path / "decoded")
    )
    assert feats.shape[0] == 5 and labels.tolist() == [-1] * 5


def test_model_mode_restored_and_bad_input_path(backbone, tmp_path):
    backbone.model.train()
    extract_features(backbone, _images(2, 32, 32), input_path="fast", decoded_cache_dir=str(tmp_path / "d"))
    assert backbone.model.training
    with pytest.raises(TransferConfigError, match="input_path"):
        extract_features(backbone, _images(2, 32, 32), input_path="gpu")
    with pytest.raises(TransferConfigError, match="input_path"):
        FeatureCache(str(tmp_path / "f"), input_path="nope")


def test_cache_key_includes_input_path(backbone, tmp_path):
    ds = _images(6, 45, 60)
    weights = "w"
    assert cache_key(backbone, ds._fingerprint, "train", weights, "stock") != cache_key(
        backbone, ds._fingerprint, "train", weights, "fast"
    )
    cache = FeatureCache(str(tmp_path / "features"), input_path="fast", decoded_cache_dir=str(tmp_path / "decoded"))
    f1, y1, p1 = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash=weights)
    f2, y2, p2 = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash=weights)
    assert (cache.misses, cache.hits) == (1, 1) and p1 == p2
    assert torch.equal(f1, f2) and torch.equal(y1, y2)
    # the stock path is a different entry (a miss), with the same features within tolerance
    f3, y3, p3 = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash=weights, input_path="stock")
    assert p3 != p1 and cache.misses == 2
    torch.testing.assert_close(f3, f1, rtol=1e-4, atol=1e-5)
    assert torch.equal(y3, y1)


def test_cache_key_includes_the_extraction_numerics(backbone, tmp_path):
    """A channels_last or bf16 extraction gives (slightly) other features: its own entry, never reused by an
    fp32 / NCHW run (the defaults differ between CPU and CUDA, and `channels_last auto` follows the backbone)."""
    ds = _images(6, 45, 60)
    folder = str(tmp_path / "features")
    paths = {}
    for name, options in {
        "fp32": {},
        "channels_last": {"channels_last": True},
        "bf16": {"amp_dtype": torch.bfloat16},
    }.items():
        cache = FeatureCache(folder, input_path="fast", decoded_cache_dir=str(tmp_path / "decoded"), **options)
        _, _, paths[name] = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
        assert cache.misses == 1, name
        _, _, again = cache.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
        assert (cache.hits, again) == (1, paths[name])
    assert len(set(paths.values())) == 3


def test_float16_cache_halves_the_entry_and_keeps_the_features(backbone, tmp_path):
    """``feature_dtype="float16"``: its own entry, half the bytes, the float32 features within float16 rounding."""
    ds = _images(6, 45, 60)
    folder = str(tmp_path / "features")
    full = FeatureCache(folder, input_path="fast", decoded_cache_dir=str(tmp_path / "decoded"))
    half = FeatureCache(folder, input_path="fast", decoded_cache_dir=str(tmp_path / "decoded"), feature_dtype="float16")
    f32, y32, p32 = full.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
    f16, y16, p16 = half.get_or_compute(backbone, ds, "train", batch_size=4, weights_hash="w")
    assert p16 != p32 and (f32.dtype, f16.dtype) == (torch.float32, torch.float16)
    assert torch.equal(y16, y32)
    torch.testing.assert_close(f16.float(), f32, rtol=1e-3, atol=1e-3)
    size = {p: os.path.getsize(os.path.join(p, "features.npy")) - 128 for p in (p32, p16)}  # minus the npy header
    assert size[p16] * 2 == size[p32]
    assert FeatureCache.meta(p16)["feature_dtype"] == "float16"
    with pytest.raises(TransferConfigError, match="feature_dtype"):
        FeatureCache(folder, feature_dtype="bfloat16")


def test_float16_overflow_is_refused_not_stored_as_inf(backbone, tmp_path, monkeypatch):
    import hf_transfer.methods.feature.cache as cache_module

    real = cache_module.iter_features

    def huge(*args, **kwargs):
        for f, y in real(*args, **kwargs):
            yield f + 1e6, y

    monkeypatch.setattr(cache_module, "iter_features", huge)
    cache = FeatureCache(str(tmp_path / "features"), feature_dtype="float16")
    with pytest.raises(TransferConfigError, match="--feature_dtype float32"):
        cache.get_or_compute(backbone, _images(4, 32, 32), "train", batch_size=4, weights_hash="w")
    assert not [n for n in os.listdir(tmp_path / "features") if not n.startswith(".")]  # no entry was completed
