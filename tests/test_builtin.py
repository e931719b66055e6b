"""Built-in domains: API, determinism, disjointness, caching, and a real domain shift."""

from __future__ import annotations

import hashlib
import os
import warnings

import datasets
import numpy as np
import pytest

from hf_transfer.data import builtin
from hf_transfer.data.builtin import BUILTIN_DOMAINS, DEFAULT_PAIR, load_builtin

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIZES = {
    "digits-printed": {"train": 10_000, "test": 2_000},
    "digits-handwritten": {"train": 600, "test": 299},
    "digits-blended": {"train": 599, "test": 299},
}


@pytest.fixture(scope="module")
def cache_a(tmp_path_factory):
    return tmp_path_factory.mktemp("builtin_a")


@pytest.fixture(scope="module")
def domains(cache_a):
    return {name: load_builtin(name, cache_dir=cache_a) for name in BUILTIN_DOMAINS}


def _content_hash(ds: datasets.Dataset) -> str:
    """sha256 over the stored PNG bytes and labels, in order."""
    h = hashlib.sha256()
    table = ds.data
    for img, lab in zip(table.column("image").to_pylist(), table.column("label").to_pylist(), strict=True):
        h.update(img["bytes"])
        h.update(int(lab).to_bytes(1, "little"))
    return h.hexdigest()


def _pixel_hashes(ds: datasets.Dataset) -> set[bytes]:
    return {hashlib.sha1(np.asarray(im, dtype=np.uint8).tobytes()).digest() for im in ds["image"]}


def test_registry_and_default_pair():
    assert set(BUILTIN_DOMAINS) == set(SIZES)
    assert all(isinstance(d, str) and d for d in BUILTIN_DOMAINS.values())
    assert DEFAULT_PAIR == ("digits-printed", "digits-handwritten")
    assert set(DEFAULT_PAIR) <= set(BUILTIN_DOMAINS)


def test_unknown_name_lists_available(tmp_path):
    with pytest.raises(ValueError) as err:
        load_builtin("digits-typed", cache_dir=tmp_path)
    for name in BUILTIN_DOMAINS:
        assert name in str(err.value)
    assert not any(tmp_path.iterdir()), "an unknown name must fail before writing anything"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_features_splits_and_labels(domains, name):
    dsd = domains[name]
    assert isinstance(dsd, datasets.DatasetDict)
    assert set(dsd) == {"train", "test"}
    for split, ds in dsd.items():
        assert len(ds) == SIZES[name][split]
        assert isinstance(ds.features["image"], datasets.Image)
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == NAMES
        assert set(ds.column_names) == {"image", "label"}
        # every class present, roughly balanced
        counts = np.bincount(np.asarray(ds["label"]), minlength=10)
        assert counts.min() >= 0.6 * counts.mean()
        # stored as PNG, decodes to 32x32 RGB
        raw = ds.data.column("image")[0].as_py()
        assert raw["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
        img = ds[0]["image"]
        assert img.mode == "RGB" and img.size == (32, 32)
        assert name in ds.info.description and len(ds.info.description) > 80


def test_builtin_prefix_accepted(domains, cache_a):
    dsd = load_builtin("builtin:digits-handwritten", cache_dir=cache_a)
    assert _content_hash(dsd["test"]) == _content_hash(domains["digits-handwritten"]["test"])


def test_deterministic_across_caches(domains, tmp_path):
    for name, dsd in domains.items():
        again = load_builtin(name, cache_dir=tmp_path / "b")
        for split in ("train", "test"):
            assert _content_hash(again[split]) == _content_hash(dsd[split]), (name, split)


def test_handwritten_and_blended_are_disjoint(domains):
    half_a, half_b = builtin._sklearn_halves()
    assert len(np.intersect1d(half_a, half_b)) == 0
    assert len(half_a) + len(half_b) == 1797
    hw, bl = domains["digits-handwritten"], domains["digits-blended"]
    assert len(half_a) == len(hw["train"]) + len(hw["test"])
    assert len(half_b) == len(bl["train"]) + len(bl["test"])

    hashes = {
        name: set().union(*(_pixel_hashes(dsd[s]) for s in ("train", "test")))
        for name, dsd in domains.items()
        if name != "digits-printed"
    }
    hashes["digits-printed"] = _pixel_hashes(domains["digits-printed"]["test"])
    for a in hashes:
        for b in hashes:
            if a < b:
                assert not hashes[a] & hashes[b], (a, b)
    # no duplicate image inside a domain either (train vs test)
    assert not _pixel_hashes(hw["train"]) & _pixel_hashes(hw["test"])

    # the handwritten domain is exactly half A: none of half B's digits is in it
    X, _ = builtin._sklearn_digits()

    def up(i):
        return hashlib.sha1(np.repeat(builtin._upsample_digit(X[i])[:, :, None], 3, 2).tobytes()).digest()

    assert {up(i) for i in half_a} == hashes["digits-handwritten"]
    assert not {up(i) for i in half_b} & hashes["digits-handwritten"]


def test_cache_is_reused(domains, cache_a, monkeypatch):
    def boom():
        raise AssertionError("regenerated although cached")

    for name in BUILTIN_DOMAINS:
        monkeypatch.setitem(builtin._GENERATORS, name, boom)
    for name, dsd in domains.items():
        again = load_builtin(name, cache_dir=cache_a)
        assert _content_hash(again["test"]) == _content_hash(dsd["test"])
    folders = sorted(p.name for p in cache_a.iterdir())
    assert folders == sorted(f"{n}-v{builtin.GENERATOR_VERSION}" for n in BUILTIN_DOMAINS)


def test_interrupted_generation_leaves_no_cache(tmp_path, monkeypatch):
    real_save = datasets.DatasetDict.save_to_disk

    def half_save(self, path, *a, **kw):
        os.makedirs(path, exist_ok=True)  # save_to_disk writes into an existing folder too
        open(os.path.join(path, "partial.arrow"), "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", half_save)
    with pytest.raises(KeyboardInterrupt):
        load_builtin("digits-handwritten", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", real_save)
    dsd = load_builtin("digits-handwritten", cache_dir=tmp_path)
    assert len(dsd["train"]) == SIZES["digits-handwritten"]["train"]
    assert [p.name for p in tmp_path.iterdir()] == [f"digits-handwritten-v{builtin.GENERATOR_VERSION}"]


def test_default_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path / "c"))
    assert builtin.builtin_cache_dir() == tmp_path / "c" / "builtin"
    assert builtin.builtin_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("HF_TRANSFER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert builtin.builtin_cache_dir() == tmp_path / "home" / ".cache" / "hf_transfer" / "builtin"


# ---------------------------------------------------------------------------------------------
# a real domain shift: a linear model on grey 16x16 pixels
# ---------------------------------------------------------------------------------------------


def _grey16(ds: datasets.Dataset, n: int | None = None, polarity: bool = True):
    from PIL import Image

    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    X = np.stack(
        [np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BOX), np.float32) / 255.0 for im in ds["image"]]
    )
    if polarity:
        # printed digits come in random colours: measure ink as the distance to the background
        # (the median of the border pixels), so dark-on-light and light-on-dark look alike
        border = np.concatenate([X[:, 0], X[:, -1], X[:, :, 0], X[:, :, -1]], axis=1)
        X = np.abs(X - np.median(border, axis=1)[:, None, None])
    X = X.reshape(len(X), -1)
    X = (X - X.mean(1, keepdims=True)) / (X.std(1, keepdims=True) + 1e-6)
    return X, np.asarray(ds["label"])


def _fit(X, y):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # one BLAS thread: on a shared 2-core machine a threaded BLAS makes this 50x slower
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=0.1, max_iter=200).fit(X, y)


def test_real_domain_shift(domains):
    pr, hw, bl = (domains[n] for n in ("digits-printed", "digits-handwritten", "digits-blended"))

    # default pair: printed -> handwritten
    clf = _fit(*_grey16(pr["train"], n=2000))
    in_dom = clf.score(*_grey16(pr["test"], n=1000))
    cross = clf.score(*_grey16(hw["test"]))
    print(f"printed->printed {in_dom:.3f}  printed->handwritten {cross:.3f}")
    assert in_dom > 0.9
    assert in_dom - cross > 0.20
    assert cross > 0.2, "same class names must mean the same digits across domains"

    # handwritten -> blended (plain grey pixels)
    clf = _fit(*_grey16(hw["train"], polarity=False))
    in_hw = clf.score(*_grey16(hw["test"], polarity=False))
    cross_bl = clf.score(*_grey16(bl["test"], polarity=False))
    print(f"handwritten->handwritten {in_hw:.3f}  handwritten->blended {cross_bl:.3f}")
    assert in_hw > 0.85
    assert in_hw - cross_bl > 0.20
    assert cross_bl > 0.2

    # the blended domain is learnable on its own
    clf = _fit(*_grey16(bl["train"]))
    in_bl = clf.score(*_grey16(bl["test"]))
    print(f"blended->blended {in_bl:.3f}")
    assert in_bl > 0.5
