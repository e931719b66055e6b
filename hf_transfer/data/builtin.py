"""Built-in domains: small digit datasets generated offline from what installed packages ship.

Nothing can be downloaded in the environments this project targets, so the default
domain-adaptation pair is *generated*, deterministically, from data that comes with the
installed packages:

* ``digits-printed``: printed digits rendered with Pillow's embedded scalable font
  (``ImageFont.load_default(size=N)``, Aileron Regular), SynNumbers-style (as in the DANN
  paper): glyph size-normalised to fill the box like the optdigits preprocessing, random
  foreground / background colours, stroke width, rotation, shear, blur and noise.
* ``digits-handwritten``: real handwritten digits, scikit-learn's ``load_digits`` (the UCI
  optdigits test set, 8x8, 17 grey levels), upsampled to 32x32 RGB. Half A of the 1797 images.
* ``digits-blended``: MNIST-M-style blends of the *other* half (B) of the scikit-learn digits over
  random crops of the two natural photos of ``sklearn.datasets.load_sample_images()``:
  ``|patch - digit|`` per channel.

Every domain is an ordinary ``datasets.DatasetDict`` (``train`` / ``test``, features
``{"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)}``, images stored as PNG), with the
same class names in every domain. No image is in two domains: the handwritten and blended domains
use disjoint halves of the scikit-learn digits. Generation is seeded per domain (same bytes every
time with the same library versions) and cached on disk, keyed by :data:`GENERATOR_VERSION`.

This module only depends on numpy, Pillow, scikit-learn and datasets (no higher layer).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np

from hf_transfer.runtime.cache import cache_path, remove_stale_staging, staged_entry

if TYPE_CHECKING:
    from PIL import Image, ImageFont

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_DOMAINS",
    "DEFAULT_PAIR",
    "DIGIT_NAMES",
    "GENERATOR_VERSION",
    "builtin_cache_dir",
    "load_builtin",
]

#: Bump whenever a generator's output changes: it is part of the cache key.
GENERATOR_VERSION = "1"

#: Class names shared by every built-in domain (words, so real names differ from ``LABEL_i``).
DIGIT_NAMES: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

IMAGE_SIZE = 32

BUILTIN_DOMAINS: dict[str, str] = {
    "digits-printed": (
        "Printed digits 0-9 rendered with Pillow's embedded scalable font (Aileron Regular), "
        "SynNumbers-style: glyph size-normalised to fill the box, random colours, stroke, "
        "rotation, shear, blur and noise; 32x32 RGB, synthetic."
    ),
    "digits-handwritten": (
        "Real handwritten digits 0-9 from scikit-learn's load_digits (UCI optdigits, 8x8, "
        "17 grey levels), upsampled to 32x32 RGB; half A of the 1797 images."
    ),
    "digits-blended": (
        "MNIST-M-style digits: half B of scikit-learn's handwritten digits (disjoint from "
        "digits-handwritten) blended as |patch - digit| over random crops of scikit-learn's "
        "two sample photos (china.jpg, flower.jpg); 32x32 RGB."
    ),
}

#: The default source -> target pair.
DEFAULT_PAIR: tuple[str, str] = ("digits-printed", "digits-handwritten")

# Sizes and seeds (part of what GENERATOR_VERSION versions).
_PRINTED_SIZES = {"train": 10_000, "test": 2_000}
_SEEDS = {"digits-printed": 1001, "digits-handwritten": 1002, "digits-blended": 1003}
_HALF_SPLIT_SEED = 1000  # the split of the 1797 scikit-learn digits into half A and half B
_TEST_FRACTION = 1.0 / 3.0

_LONG_DESCRIPTIONS = {
    "digits-printed": (
        "hf_transfer built-in domain 'digits-printed' (generator v{v}): printed digits rendered "
        "offline with Pillow's embedded scalable font (ImageFont.load_default: Aileron Regular, "
        "https://dotcolon.net/fonts/aileron) in the style of SynNumbers (Ganin & Lempitsky, DANN). "
        "Each glyph is rotated (+-15 deg) and sheared, then size-normalised to fill the 32x32 box "
        "like the optdigits preprocessing, drawn with a random stroke width in random "
        "foreground/background colours, blurred and noised. "
        "{n_train} train / {n_test} test images, balanced classes, seed {seed}. Synthetic data."
    ),
    "digits-handwritten": (
        "hf_transfer built-in domain 'digits-handwritten' (generator v{v}): real handwritten "
        "digits from scikit-learn's load_digits (a copy of the test set of the UCI 'Optical "
        "Recognition of Handwritten Digits' data, E. Alpaydin & C. Kaynak, CC BY 4.0): 8x8 images "
        "with 17 grey levels, white ink on black, upsampled bilinearly to 32x32 and copied to 3 "
        "channels. Only half A of the 1797 images (a seeded, class-stratified half; half B is used "
        "by 'digits-blended'), split 2/3 train / 1/3 test stratified by class: "
        "{n_train} train / {n_test} test images."
    ),
    "digits-blended": (
        "hf_transfer built-in domain 'digits-blended' (generator v{v}): MNIST-M-style digits "
        "(Ganin & Lempitsky). Half B of scikit-learn's handwritten digits (disjoint from "
        "'digits-handwritten'), upsampled to 32x32, blended as |patch - digit| per channel over "
        "random 32x32 crops of the two natural photos shipped by scikit-learn "
        "(load_sample_images: china.jpg and flower.jpg, CC BY 2.0, Flickr users danielbuechele and "
        "vultilion). Split 2/3 train / 1/3 test stratified by class: {n_train} train / {n_test} "
        "test images, seed {seed}."
    ),
}


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def builtin_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where generated domains are cached: ``cache_dir`` if given, else ``<cache root>/builtin``.

    The cache root is ``$HF_TRANSFER_CACHE`` or ``~/.cache/hf_transfer``."""
    return cache_path("builtin", cache_dir)


def _resolve_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"built-in domain name must be a string, got {type(name).__name__}")
    key = name.strip()
    if key.startswith("builtin:"):
        key = key[len("builtin:") :]
    if key not in BUILTIN_DOMAINS:
        raise ValueError(f"unknown built-in domain {name!r}; available: {', '.join(sorted(BUILTIN_DOMAINS))}")
    return key


def load_builtin(name: str, cache_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Load (generating and caching on first use) the built-in domain ``name``.

    ``name`` is one of :data:`BUILTIN_DOMAINS` (a ``builtin:`` prefix is accepted). Returns a
    ``DatasetDict`` with ``train`` and ``test`` splits and features
    ``{"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)}``.

    The first call generates the domain into a temporary folder inside the cache directory and
    renames it into place, so an interrupted generation never leaves a partial cache; later calls
    are a plain ``load_from_disk``.
    """
    key = _resolve_name(name)
    root = builtin_cache_dir(cache_dir)
    target = root / f"{key}-v{GENERATOR_VERSION}"
    if not target.is_dir():
        remove_stale_staging(root)
        logger.info("generating built-in domain %r into %s", key, target)
        dsd = _GENERATORS[key]()
        with staged_entry(root, target.name, done="dataset_dict.json") as tmp, _quiet_datasets():
            dsd.save_to_disk(str(tmp))
    with _quiet_datasets():
        return datasets.load_from_disk(str(target))


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No 'Saving the dataset' progress bars for these small, internal writes."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(DIGIT_NAMES))})


def _png(arr: np.ndarray) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="RGB").save(
        buf,
        format="PNG",
        compress_level=1,  # fast; noisy 32x32 images barely compress anyway
    )
    return {"bytes": buf.getvalue(), "path": None}


def _build(name: str, splits: dict[str, tuple[list[np.ndarray], np.ndarray]], seed: int) -> datasets.DatasetDict:
    """splits: split -> (list of HxWx3 uint8 arrays, int labels)."""
    sizes = {s: len(v[1]) for s, v in splits.items()}
    description = _LONG_DESCRIPTIONS[name].format(
        v=GENERATOR_VERSION, n_train=sizes["train"], n_test=sizes["test"], seed=seed
    )
    out = {}
    for split, (images, labels) in splits.items():
        info = datasets.DatasetInfo(
            description=description,
            features=_features(),
            dataset_name=name,
            version=f"{GENERATOR_VERSION}.0.0",
            license="CC BY 4.0 (optdigits); CC BY 2.0 (sample photos)"
            if name == "digits-blended"
            else ("CC BY 4.0" if name == "digits-handwritten" else "synthetic, generated by hf_transfer"),
        )
        out[split] = datasets.Dataset.from_dict(
            {"image": [_png(a) for a in images], "label": [int(x) for x in labels]},
            features=_features(),
            info=info,
            split=split,
        )
    return datasets.DatasetDict(out)


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labels``) of a class-stratified split: (rest, part) with ``part`` about
    ``fraction`` of each class. Both are sorted."""
    part: list[np.ndarray] = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        pos = pos[rng.permutation(len(pos))]
        part.append(pos[: int(round(len(pos) * fraction))])
    part_arr = np.sort(np.concatenate(part))
    rest = np.setdiff1d(np.arange(len(labels)), part_arr)
    return rest, part_arr


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 8, 8] with values 0..16, targets [N])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.images, dtype=np.uint8), np.asarray(d.target, dtype=np.int64)


def _sklearn_halves() -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``load_digits()`` of half A (``digits-handwritten``) and half B
    (``digits-blended``): a seeded, class-stratified, disjoint split of the 1797 images."""
    _, y = _sklearn_digits()
    half_a, half_b = _stratified_split(y, 0.5, np.random.default_rng(_HALF_SPLIT_SEED))
    return half_a, half_b


def _upsample_digit(img8: np.ndarray) -> np.ndarray:
    """8x8 (0..16) -> 32x32 grey uint8, bilinear."""
    from PIL import Image

    small = Image.fromarray((img8.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    return np.asarray(small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)


def _split_half(indices: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_pos, test_pos = _stratified_split(y[indices], _TEST_FRACTION, rng)
    return {"train": indices[train_pos], "test": indices[test_pos]}


# --------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------


def _generate_handwritten() -> datasets.DatasetDict:
    name = "digits-handwritten"
    X, y = _sklearn_digits()
    half_a, _ = _sklearn_halves()
    splits = {}
    for split, idx in _split_half(half_a, y, _SEEDS[name]).items():
        images = [np.repeat(_upsample_digit(X[i])[:, :, None], 3, axis=2) for i in idx]
        splits[split] = (images, y[idx])
    return _build(name, splits, _SEEDS[name])


def _generate_blended() -> datasets.DatasetDict:
    from sklearn.datasets import load_sample_images

    name = "digits-blended"
    seed = _SEEDS[name]
    X, y = _sklearn_digits()
    _, half_b = _sklearn_halves()
    photos = [np.asarray(p, dtype=np.uint8) for p in load_sample_images().images]
    rng = np.random.default_rng([seed, 1])
    splits = {}
    for split, idx in _split_half(half_b, y, seed).items():
        images = []
        for i in idx:
            digit = _upsample_digit(X[i]).astype(np.int16)
            photo = photos[int(rng.integers(len(photos)))]
            r = int(rng.integers(photo.shape[0] - IMAGE_SIZE + 1))
            c = int(rng.integers(photo.shape[1] - IMAGE_SIZE + 1))
            patch = photo[r : r + IMAGE_SIZE, c : c + IMAGE_SIZE].astype(np.int16)
            images.append(np.abs(patch - digit[:, :, None]).astype(np.uint8))
        splits[split] = (images, y[idx])
    return _build(name, splits, seed)


_FONT_SIZE = 48  # render size; glyphs are then normalised into a 2x canvas and downsampled
_CANVAS = 2 * IMAGE_SIZE


def _glyph(digit: int, stroke: int, font: Font, cache: dict[tuple[int, int], Image.Image]) -> Image.Image:
    """The tight, upright glyph mask of ``digit`` with ``stroke`` (rendered once, then reused)."""
    from PIL import Image, ImageDraw

    key = (digit, stroke)
    if key not in cache:
        big = Image.new("L", (2 * _FONT_SIZE, 2 * _FONT_SIZE), 0)
        ImageDraw.Draw(big).text(
            (_FONT_SIZE, _FONT_SIZE),
            str(digit),
            font=font,
            fill=255,
            anchor="mm",
            stroke_width=stroke,
            stroke_fill=255,
        )
        cache[key] = big.crop(big.getbbox())
    return cache[key]


def _printed_mask(
    digit: int, rng: np.random.Generator, font: Font, cache: dict[tuple[int, int], Image.Image]
) -> np.ndarray:
    """The 32x32 uint8 coverage mask (0..255) of one printed ``digit``: random stroke, rotation,
    shear, size normalisation, offset and blur."""
    from PIL import Image, ImageFilter

    # 1. glyph mask at high resolution, random stroke width (bolder / thinner strokes)
    src = _glyph(digit, int(rng.integers(0, 4)), font, cache)
    # 2. rotation (+-15 deg) and shear (+-0.3) as one affine map about the centre
    angle = math.radians(rng.uniform(-15.0, 15.0))
    shear = float(rng.uniform(-0.3, 0.3))
    w, h = src.size
    side = int(math.ceil(math.hypot(w + 0.3 * h, h))) + 4
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(src, ((side - w) // 2, (side - h) // 2))
    # forward map (about the centre): rotation @ shear = [[c, c*s - n], [n, n*s + c]] with
    # c, n = cos, sin and s = shear; its determinant is 1, so the inverse is the adjugate.
    c, n = math.cos(angle), math.sin(angle)
    a, b, d, e = c, c * shear - n, n, n * shear + c
    ia, ib, id_, ie = e, -b, -d, a
    half = side / 2.0
    canvas = canvas.transform(
        (side, side),
        Image.Transform.AFFINE,
        (ia, ib, half - ia * half - ib * half, id_, ie, half - id_ * half - ie * half),
        resample=Image.Resampling.BILINEAR,
    )
    glyph = canvas.crop(canvas.getbbox())
    # 3. size normalisation: the glyph fills the box (height), like optdigits' preprocessing,
    #    with a small random margin, a random width stretch and a small random offset
    gh = int(round(_CANVAS * rng.uniform(0.80, 0.97)))
    aspect = glyph.width / glyph.height * rng.uniform(0.85, 1.3)
    gw = min(max(int(round(gh * aspect)), 6), _CANVAS - 2)
    glyph = glyph.resize((gw, gh), Image.Resampling.LANCZOS)
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    x0 = min(max((_CANVAS - gw) // 2 + dx, 0), _CANVAS - gw)
    y0 = min(max((_CANVAS - gh) // 2 + dy, 0), _CANVAS - gh)
    mask = Image.new("L", (_CANVAS, _CANVAS), 0)
    mask.paste(glyph, (x0, y0))
    mask = mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    # 4. blur (on the mask: the same as blurring the two-colour image, which is affine in it)
    radius = float(rng.uniform(0.0, 1.0))
    if radius > 0.2:
        mask = mask.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(mask, dtype=np.uint8)


def _colourise(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """masks [N, 32, 32] uint8 -> [N, 32, 32, 3] uint8: random foreground / background colours
    with enough luminance contrast, plus Gaussian noise of a random strength per image."""
    n = len(masks)
    lum = np.array([0.299, 0.587, 0.114])
    fg = rng.integers(0, 256, (n, 3))
    bg = rng.integers(0, 256, (n, 3))
    bad = np.abs((fg - bg) @ lum) < 70.0
    while bad.any():  # redraw low-contrast pairs (deterministic: same rng stream)
        k = int(bad.sum())
        fg[bad] = rng.integers(0, 256, (k, 3))
        bg[bad] = rng.integers(0, 256, (k, 3))
        bad = np.abs((fg - bg) @ lum) < 70.0
    m = masks.astype(np.float32)[..., None] / 255.0
    fg_rgb = fg.astype(np.float32)[:, None, None, :]
    bg_rgb = bg.astype(np.float32)[:, None, None, :]
    img = bg_rgb + (fg_rgb - bg_rgb) * m
    sigma = rng.uniform(0.0, 12.0, n).astype(np.float32)[:, None, None, None]
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _generate_printed(sizes: dict[str, int] | None = None) -> datasets.DatasetDict:
    from PIL import ImageFont

    name = "digits-printed"
    seed = _SEEDS[name]
    sizes = dict(_PRINTED_SIZES if sizes is None else sizes)
    font = ImageFont.load_default(size=_FONT_SIZE)
    cache: dict = {}
    splits = {}
    for k, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, k])
        labels = np.arange(n) % 10
        labels = labels[rng.permutation(n)]
        masks = np.stack([_printed_mask(int(lab), rng, font, cache) for lab in labels])
        splits[split] = (list(_colourise(masks, rng)), labels)
    return _build(name, splits, seed)


_GENERATORS: dict[str, Callable[[], datasets.DatasetDict]] = {
    "digits-printed": _generate_printed,
    "digits-handwritten": _generate_handwritten,
    "digits-blended": _generate_blended,
}
