"""Fast input path: decode once into a memory-mapped uint8 cache, augment whole batches on the device.

The stock path (:class:`~hf_transfer.data.paired.ImageDomainDataset` + the torchvision PIL
transforms of :mod:`hf_transfer.data.transforms`) decodes every image and runs
``RandomResizedCrop``/``ToTensor``/``Normalize`` per sample, every epoch, on the loader's CPU
workers. This module splits that work in two:

:class:`DecodedImages`
    decodes a ``datasets.Dataset`` ONCE into a ``uint8`` array ``[N, 3, Hs, Ws]`` stored as an
    ``.npy`` file and opened as a ``np.memmap`` (never the whole dataset in RAM). Items are
    ``{"pixel_values": uint8 [3, Hs, Ws], "labels": int}``, so the loader only copies bytes.

:class:`BatchAugment`
    an ``nn.Module`` without parameters that turns a ``uint8`` batch into the normalised float
    batch the backbone expects. In ``.train()`` mode it applies a per-sample random resized crop
    (+ horizontal flip for ``"standard"``), with the crop parameters drawn exactly like
    ``torchvision.transforms.RandomResizedCrop.get_params`` (vectorised); on CUDA the crops are
    ONE ``grid_sample`` call over the batch, on the CPU a loop of uint8 antialiased resizes of
    crop views (faster there). In ``.eval()`` mode it only converts and normalises. Put it in
    front of the model (inside its ``forward``) so it runs on the model's device; for CPU-only
    training :class:`AugmentingCollate` runs it in the DataLoader workers instead.

Storage (what ``DecodedImages`` keeps)
--------------------------------------
``split_kind="eval"``: exactly the stock eval preprocessing before ``ToTensor``: the PIL image
converted to RGB, ``Resize(floor(size / crop_pct))`` (short side, same interpolation, PIL
antialiasing) and ``CenterCrop(size)``, with torchvision's own functions. ``BatchAugment`` in eval
mode then does ``x.float() / 255``, ``(x - mean) / std`` with the same float32 operations as
``ToTensor`` + ``Normalize``, so the result equals :func:`~hf_transfer.data.transforms.eval_transform`
(bit for bit in practice).

``split_kind="train"``: every image resized (PIL, ``cfg.interpolation``, antialiased) to ONE storage
shape ``(Hs, Ws)`` chosen from the whole split, never from one image: when more than half of the
images share one size, that size with its short side brought down to ``storage_size`` (default
``floor(size / crop_pct)``, 256 at 224; an image already smaller is kept at its native size, e.g.
the 32x32 built-in digits: never upscaled in storage); otherwise the square ``storage_size x
storage_size``. The sizes are read from the image headers before anything is decoded. The
ORIGINAL ``(H, W)`` of every image is kept too (``image_sizes``).

Why this keeps the augmentation equivalent in distribution to the stock transform:
``RandomResizedCrop`` picks a box in the full original image from ``(H, W)`` alone. The storage is
the whole image (no crop), rescaled per axis, so a box in normalised coordinates is the same region
of the picture in the original and in the storage. ``BatchAugment`` draws the box with the original
``(H, W)``; when every image has the same size (the usual case: the built-in digits, CIFAR-like
data, the 320x256 benchmark JPEGs) the storage dims stand in for ``(H, W)`` and nothing else
travels with the batch. Otherwise (mixed sizes: one odd image is enough) the items carry ``image_size`` (the original ``(H, W)``; ``return_image_size=None``, the default, turns
it on exactly then), the collate functions keep it and the model's forward hands it to
``BatchAugment``, so the boxes are drawn for each image's own size and the crop distribution stays
exact. An image of another size is squashed into the storage shape: its crops are resampled from
that storage, which only changes their resolution (like any image larger than the storage).

What does differ from the stock transform, by construction:

* resolution: a crop is resampled from the storage (short side ``storage_size``), not from the
  original, so crops of images much larger than the storage are softer (as if the dataset had
  been resized to ``storage_size`` first, which is what FFCV-style pipelines do);
* resampling filter: the CPU ``loop`` uses torch's antialiased uint8 kernels, within 1 grey
  level of PIL's. The CUDA ``grid`` path (``grid_sample``, ``cfg.interpolation``) does not
  antialias: most random crops are upscaled to ``size``, where both are plain interpolation;
  large crops are downscaled, by at most ``storage_size / size`` (1.14x with the default storage
  size) times the crop's aspect ratio (<= 4/3) along one axis, where PIL averages a little more.
  Per-pixel mean and std of augmented images match the stock transform to within draw-to-draw
  noise with both (tests/test_fast_input.py);
* box rounding (``loop`` only): when the storage is NOT at the original resolution (images whose
  short side exceeds ``storage_size``), box edges are rounded to storage pixels (<= 0.5 px).

Cache
-----
Files live under ``cache_dir`` (default ``$HF_TRANSFER_CACHE/decoded``, else
``~/.cache/hf_transfer/decoded``) in one folder per key: the dataset's ``_fingerprint``, image
column, kind, size, storage size, interpolation, crop_pct and :data:`DECODED_VERSION`. The folder is
written in a staging folder named after the writing process and renamed into place, so an
interrupted or failed decode never leaves a cache that a later run would trust; staging folders of
killed writers are removed by the next construction (:func:`hf_transfer.cache.remove_stale_staging`).
A second construction only opens the memmap.

An image that cannot be decoded is an error naming its row (the data loading checks every image
before training, see :mod:`hf_transfer.data.load`, so this only fires for direct use).

This module is part of the data layer: it imports nothing from ``hf_transfer`` outside
``hf_transfer.data`` and ``hf_transfer.errors``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hf_transfer.cache import cache_path, make_staging_dir, remove_stale_staging
from hf_transfer.errors import TransferConfigError
from hf_transfer.data.load import IMAGE_ERRORS
from hf_transfer.data.transforms import AUGMENTATIONS, DataConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DECODED_VERSION",
    "AugmentingCollate",
    "BatchAugment",
    "DecodedImages",
    "collate_decoded",
    "decoded_cache_dir",
    "sample_crop_params",
    "split_kind_for",
]

#: Bump whenever the stored bytes for the same inputs change: it is part of the cache key.
DECODED_VERSION = "2"  # 2: the train storage shape no longer comes from the first image

SPLIT_KINDS = ("train", "eval")

#: ``RandomResizedCrop`` (scale, ratio) per augmentation, as in :func:`transforms.train_transform`.
CROP_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "standard": ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)),
    "light": ((0.75, 1.0), (0.9, 1.1)),
}
FLIP = {"standard": True, "light": False}

_GRID_MODES = ("bilinear", "bicubic", "nearest")


def decoded_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$HF_TRANSFER_CACHE/decoded``, else ``~/.cache/hf_transfer/decoded``."""
    return cache_path("decoded", cache_dir)


def split_kind_for(augment: str, train: bool) -> str:
    """The :class:`DecodedImages` kind a split needs: ``"train"`` only for augmented training data."""
    if augment not in AUGMENTATIONS:
        raise TransferConfigError(f"Unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}.")
    return "train" if train and augment != "none" else "eval"


# --------------------------------------------------------------------------------------------
# decoding (module-level functions so worker processes can run them and tests can patch them)


def _pil_interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }.get(name, InterpolationMode.BILINEAR)  # the stock transforms' fallback


def _to_rgb(value):
    """A decoded ``Image`` cell (PIL image, ``{"bytes", "path"}`` dict or array) as an RGB PIL image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            img = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            img = Image.open(value["path"])
        else:
            raise TransferConfigError("An image cell has neither bytes nor a path.")
    elif isinstance(value, np.ndarray):
        img = Image.fromarray(value)
    else:
        raise TransferConfigError(f"Cannot read an image from a {type(value).__name__}.")
    return img.convert("RGB")  # exactly what the stock make_batch_transform does


def _prepare(img, kind: str, size: int, crop_pct: float, interpolation: str, storage_hw: tuple[int, int]):
    """One RGB PIL image -> uint8 ``[3, h, w]`` storage array (see the module doc)."""
    from torchvision.transforms import functional as TF

    interp = _pil_interpolation(interpolation)
    if kind == "eval":
        img = TF.resize(img, math.floor(size / crop_pct), interpolation=interp)
        img = TF.center_crop(img, size)
    else:
        hs, ws = storage_hw
        if (img.height, img.width) != (hs, ws):
            img = TF.resize(img, [hs, ws], interpolation=interp)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _cells(dataset, start: int, stop: int, image_column: str) -> list:
    """The image cells of rows ``[start, stop)``; an undecodable one is an error that names its row."""
    try:
        return dataset[start:stop][image_column]
    except IMAGE_ERRORS:  # decoded by datasets: find the row
        for i in range(start, stop):
            try:
                dataset[i][image_column]
            except IMAGE_ERRORS as err:
                raise _bad_row(i, err) from err
        raise


def _bad_row(i: int, err: Exception) -> TransferConfigError:
    return TransferConfigError(f"Row {i}: the image cannot be decoded ({type(err).__name__}: {err}).")


def _decode_chunk(dataset, start: int, stop: int, image_column: str, kind: str, size: int,
                  crop_pct: float, interpolation: str, storage_hw: tuple[int, int]):
    """Rows ``[start, stop)`` -> (uint8 ``[n, 3, Hs, Ws]``, int32 original ``[n, 2]`` (H, W))."""
    cells = _cells(dataset, start, stop, image_column)
    out = np.empty((stop - start, 3, *storage_hw), dtype=np.uint8)
    sizes = np.empty((stop - start, 2), dtype=np.int32)
    for k, cell in enumerate(cells):
        try:
            img = _to_rgb(cell)
        except IMAGE_ERRORS as err:
            raise _bad_row(start + k, err) from err
        sizes[k] = (img.height, img.width)
        out[k] = _prepare(img, kind, size, crop_pct, interpolation, storage_hw)
    return out, sizes


class _Chunks(torch.utils.data.Dataset):
    """Chunk ``k`` of the source dataset, decoded: lets a DataLoader decode with worker processes."""

    def __init__(self, dataset, chunk_size: int, **kwargs):
        self.dataset, self.chunk_size, self.kwargs = dataset, chunk_size, kwargs
        self.n = len(dataset)

    def __len__(self) -> int:
        return (self.n + self.chunk_size - 1) // self.chunk_size

    def __getitem__(self, k: int):
        start = k * self.chunk_size
        stop = min(self.n, start + self.chunk_size)
        arr, sizes = _decode_chunk(self.dataset, start, stop, **self.kwargs)
        return start, arr, sizes


def _storage_shape(hw: tuple[int, int], storage_size: int) -> tuple[int, int]:
    """``hw`` with its short side brought down to ``storage_size`` (never up)."""
    h, w = hw
    short = min(h, w)
    if short <= storage_size:
        return int(h), int(w)  # already small: keep native resolution
    scale = storage_size / short
    hs = storage_size if h == short else max(storage_size, round(h * scale))
    ws = storage_size if w == short else max(storage_size, round(w * scale))
    return hs, ws


def _split_storage_shape(sizes: np.ndarray, storage_size: int) -> tuple[int, int]:
    """The train storage shape of a split: its majority size (if > half the images) or a square.

    A property of the whole split, so no single image decides how the others are stored."""
    if len(sizes):
        values, counts = np.unique(np.asarray(sizes).reshape(-1, 2), axis=0, return_counts=True)
        best = int(np.argmax(counts))
        if 2 * counts[best] > len(sizes):
            return _storage_shape((int(values[best][0]), int(values[best][1])), storage_size)
    return storage_size, storage_size


def _header_size(cell) -> tuple[int, int]:
    """``(H, W)`` of an undecoded image cell from its header, as datasets would decode it (EXIF rotation)."""
    from PIL import Image

    if not isinstance(cell, dict):  # already decoded (a PIL image or an array)
        img = _to_rgb(cell)
        return img.height, img.width
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell.get("path")
    if source is None:
        raise TransferConfigError("An image cell has neither bytes nor a path.")
    with Image.open(source) as img:
        w, h = img.size
        rotated = img.getexif().get(0x0112) in (5, 6, 7, 8)  # Orientation: transposed by exif_transpose
    return (w, h) if rotated else (h, w)


def _header_sizes(dataset, image_column: str) -> np.ndarray:
    """``[N, 2]`` original sizes read from the image headers (no pixel is decoded)."""
    import datasets

    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    sizes = np.zeros((len(dataset), 2), dtype=np.int64)
    for i, cell in enumerate(dataset[image_column]):
        try:
            sizes[i] = _header_size(cell)
        except IMAGE_ERRORS as err:
            raise _bad_row(i, err) from err
    return sizes


# --------------------------------------------------------------------------------------------
# the decoded dataset


class DecodedImages(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` (image, label) decoded once into a memory-mapped uint8 cache.

    Args:
        dataset: a ``datasets.Dataset`` with an image column (``Image`` feature, decoded or not)
            and, when ``with_labels``, an integer label column.
        cfg: the backbone's :class:`DataConfig` (size, crop_pct, interpolation).
        split_kind: ``"train"`` (storage for random resized crops) or ``"eval"`` (the stock eval
            preprocessing, ready to normalise). :func:`split_kind_for` picks it from an augmentation.
        cache_dir: the cache root (see :func:`decoded_cache_dir`).
        with_labels: return ``labels`` (set False for unlabelled target domains).
        storage_size: train storage short side (default ``floor(size / crop_pct)``); ignored for eval.
        image_column, label_column: column names.
        return_image_size: also return ``image_size`` (int64 ``[2]``, the original ``(H, W)``), for
            :class:`BatchAugment` on datasets of mixed sizes (see the module doc). None (default):
            exactly when the images are not all of one size.
        num_workers: decoding processes (0: decode in this process).
        chunk_size: rows decoded per step (bounds the RAM used while decoding).
        progress: show a tqdm bar while decoding (None: only on a terminal).
        cache_key: use this instead of the dataset's ``_fingerprint`` (for datasets without one).

    Items: ``{"pixel_values": uint8 [3, Hs, Ws], "labels": int}`` (+ ``image_size``). After
    construction: ``path`` (the cache folder), ``storage_hw``, ``image_sizes`` (``[N, 2]``),
    ``same_size`` (all images have one original size), ``decoded`` (whether this
    construction had to decode, False on a cache hit).
    """

    def __init__(self, dataset, cfg: DataConfig, split_kind: str = "train", cache_dir=None,
                 with_labels: bool = True, *, storage_size: int | None = None,
                 image_column: str = "image", label_column: str = "label",
                 return_image_size: bool | None = None, num_workers: int = 0, chunk_size: int = 256,
                 progress: bool | None = None, cache_key: str | None = None):
        if split_kind not in SPLIT_KINDS:
            raise TransferConfigError(f"split_kind must be one of {SPLIT_KINDS}, got {split_kind!r}.")
        columns = getattr(dataset, "column_names", None)
        if columns is None:
            raise TransferConfigError("DecodedImages needs a datasets.Dataset (map-style, with columns).")
        if image_column not in columns:
            raise TransferConfigError(f"No image column {image_column!r} in the dataset (columns: {columns}).")
        if with_labels and label_column not in columns:
            raise TransferConfigError(
                f"No label column {label_column!r} in the dataset (columns: {columns}); "
                "pass with_labels=False for unlabelled data.")
        fingerprint = cache_key or getattr(dataset, "_fingerprint", None)
        if not fingerprint:
            raise TransferConfigError("The dataset has no _fingerprint: pass cache_key= to name its cache.")
        self.cfg, self.split_kind = cfg, split_kind
        self.with_labels = with_labels
        self.size = cfg.size
        self.storage_size = int(storage_size or math.floor(cfg.size / cfg.crop_pct))
        if self.storage_size < 1:
            raise TransferConfigError(f"storage_size must be positive, got {storage_size}.")
        key_fields = {
            "fingerprint": fingerprint, "image_column": image_column, "kind": split_kind,
            "size": self.size, "interpolation": cfg.interpolation, "version": DECODED_VERSION,
        }
        if split_kind == "eval":
            key_fields["crop_pct"] = float(cfg.crop_pct)
        else:
            key_fields["storage_size"] = self.storage_size
        digest = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
        label = self.size if split_kind == "eval" else self.storage_size
        self.root = decoded_cache_dir(cache_dir)
        self.path = self.root / f"{split_kind}-{label}-{digest}"
        self.decoded = False
        remove_stale_staging(self.root)
        if not (self.path / "images.npy").exists():
            self._build(dataset, key_fields, image_column, num_workers, chunk_size, progress)
            self.decoded = True
        self._mm: np.memmap | None = None
        arr = self.images  # opens the memmap, checks the file
        self.image_sizes = np.load(self.path / "sizes.npy")
        if len(arr) != len(dataset) or len(self.image_sizes) != len(dataset):
            raise TransferConfigError(
                f"Decoded cache {self.path} holds {len(arr)} images for a dataset of {len(dataset)}; "
                "delete the folder to rebuild it.")
        self.storage_hw = (int(arr.shape[2]), int(arr.shape[3]))
        self.same_size = bool(len(dataset) == 0 or np.all(self.image_sizes == self.image_sizes[0]))
        self.return_image_size = not self.same_size if return_image_size is None else return_image_size
        self.labels = (np.asarray(dataset[label_column], dtype=np.int64) if with_labels else None)

    # -- cache ------------------------------------------------------------------------------

    def _build(self, dataset, key_fields, image_column, num_workers, chunk_size, progress):
        from tqdm.auto import tqdm

        n = len(dataset)
        src = dataset.select_columns([image_column]).with_format(None)
        if self.split_kind == "eval":
            storage_hw = (self.size, self.size)
        else:
            storage_hw = _split_storage_shape(_header_sizes(src, image_column), self.storage_size)
        kwargs = {"image_column": image_column, "kind": self.split_kind, "size": self.size,
                      "crop_pct": float(self.cfg.crop_pct), "interpolation": self.cfg.interpolation,
                      "storage_hw": storage_hw}
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = make_staging_dir(self.root, self.path.name)
        try:
            images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                               shape=(n, 3, *storage_hw))
            sizes = np.zeros((n, 2), dtype=np.int32)
            chunks = _Chunks(src, max(1, int(chunk_size)), **kwargs)
            loader = (torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=num_workers)
                      if num_workers > 0 else (chunks[k] for k in range(len(chunks))))
            with tqdm(total=n, unit="img", desc=f"decoding {self.split_kind} images",
                      disable=(not progress) if progress is not None else None) as bar:
                for start, arr, sz in loader:
                    start = int(start)
                    arr, sz = np.asarray(arr), np.asarray(sz)
                    images[start:start + len(arr)] = arr
                    sizes[start:start + len(arr)] = sz
                    bar.update(len(arr))
            images.flush()
            del images
            np.save(tmp / "sizes.npy", sizes)
            (tmp / "meta.json").write_text(json.dumps(
                {**key_fields, "storage_hw": list(storage_hw), "num_images": n}, indent=1))
            try:
                os.rename(tmp, self.path)
            except OSError:
                if not (self.path / "images.npy").exists():  # not a concurrent writer: a real error
                    raise
                logger.info("Another process wrote %s first; using it.", self.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def images(self) -> np.memmap:
        """The read-only ``uint8 [N, 3, Hs, Ws]`` memmap (opened lazily, once per process)."""
        if self._mm is None:
            self._mm = np.load(self.path / "images.npy", mmap_mode="r")
        return self._mm

    def __getstate__(self):  # worker processes reopen the memmap instead of pickling its bytes
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    # -- items ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.image_sizes)

    def _item(self, i: int, pixels: torch.Tensor) -> dict:
        item: dict[str, Any] = {"pixel_values": pixels}
        if self.with_labels:
            item["labels"] = int(self.labels[i])
        if self.return_image_size:
            item["image_size"] = torch.from_numpy(self.image_sizes[i].astype(np.int64))
        return item

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            i += len(self)
        return self._item(i, torch.from_numpy(np.array(self.images[i])))

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """One gather from the memmap for a whole batch (used by DataLoader's auto-collation)."""
        idx = np.asarray(indices, dtype=np.int64)
        pixels = torch.from_numpy(self.images[idx])  # fancy indexing copies into RAM
        return [self._item(int(i), pixels[k]) for k, i in enumerate(idx)]


def collate_decoded(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack every tensor key (``pixel_values``, ``target_pixel_values``, ``image_size``, ...);
    labels to int64. Same output as :func:`~hf_transfer.data.paired.collate_images` plus the extra keys."""
    batch: dict[str, torch.Tensor] = {}
    for key, value in examples[0].items():
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack([e[key] for e in examples])
        else:
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
    return batch


# --------------------------------------------------------------------------------------------
# batched augmentation


@torch.compiler.disable
def sample_crop_params(heights: torch.Tensor, widths: torch.Tensor,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                       generator: torch.Generator | None = None, attempts: int = 10):
    """``RandomResizedCrop.get_params`` for a batch of image sizes, vectorised.

    Same algorithm as torchvision: up to ``attempts`` tries of an area fraction uniform in
    ``scale`` and an aspect ratio log-uniform in ``ratio`` (``w = round(sqrt(A r))``,
    ``h = round(sqrt(A / r))``), the first try that fits wins and its offset is uniform over the
    valid positions; if none fits, the largest central crop with the ratio clamped to ``ratio``.
    Returns int64 CPU tensors ``(top, left, height, width)``, each ``[B]``. Draws from ``generator``
    (default: torch's global CPU generator, so the Trainer's RNG checkpoints cover it).
    """
    heights = torch.as_tensor(heights).to(device="cpu", dtype=torch.int64).reshape(-1)
    widths = torch.as_tensor(widths).to(device="cpu", dtype=torch.int64).reshape(-1)
    b = heights.shape[0]
    H, W = heights.double(), widths.double()
    area = (H * W)[:, None]
    u = torch.rand(3, b, attempts, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.round(torch.sqrt(target * aspect))  # torch.round == Python round (half to even)
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    found = fits.any(dim=1)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w_try, h_try = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # fallback: central crop, the whole image with its aspect ratio clamped into ``ratio``
    in_ratio = W / H
    lo, hi = min(ratio), max(ratio)
    w_fb = torch.where(in_ratio > hi, torch.round(H * hi), W)
    h_fb = torch.where(in_ratio < lo, torch.round(W / lo), H)
    ch = torch.where(found, h_try, h_fb).to(torch.int64)
    cw = torch.where(found, w_try, w_fb).to(torch.int64)
    # offsets uniform over [0, H - h] x [0, W - w] (torch.randint(0, H - h + 1))
    top_rand = torch.minimum(torch.floor(u[2, :, 0] * (heights - ch + 1)).to(torch.int64), heights - ch)
    left_u = torch.rand(b, generator=generator, dtype=torch.float64)
    left_rand = torch.minimum(torch.floor(left_u * (widths - cw + 1)).to(torch.int64), widths - cw)
    top = torch.where(found, top_rand, (heights - ch) // 2)
    left = torch.where(found, left_rand, (widths - cw) // 2)
    return top, left, ch, cw


@contextlib.contextmanager
def _one_cpu_thread(enabled: bool = True):
    """Run BatchAugment's CPU ops with one intra-op thread, then restore the setting.

    Its ops are small (one image in the ``loop`` crops, one batch of uint8 images elsewhere); with
    several OpenMP threads every op pays a barrier, which on a busy machine costs far more than it
    gains (the loop ran 15x slower with 2 threads on 2 shared cores, the main process competing
    with the DataLoader workers). The augmentation is a small part of a CPU training step.
    """
    n = torch.get_num_threads()
    if not enabled or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class BatchAugment(nn.Module):
    """uint8 ``[B, 3, Hs, Ws]`` -> normalised ``[B, 3, size, size]`` (``out_dtype``), on the input's device.

    ``.train()``: per-sample random resized crop (torchvision's ``get_params``, see
    :func:`sample_crop_params`) + horizontal flip with p=0.5 for ``"standard"``; ``"light"`` is
    the smaller crop range without flip; ``"none"`` behaves as in eval mode. ``.eval()``:
    ``x / 255`` and ``Normalize`` only (if the input is not ``size x size``: antialiased resize of
    the short side to ``floor(size / crop_pct)`` and a center crop first, i.e. the eval recipe on
    the stored image).

    Two implementations of the crops, same parameters (the same draws give the same boxes):

    * ``"grid"`` (default on CUDA): ONE ``grid_sample`` over the batch with a per-sample affine
      grid (box + flip), on float input; no antialiasing. Boxes are exact in normalised
      coordinates whatever the storage scale.
    * ``"loop"`` (default on CPU): per sample, a uint8 crop view resized with
      ``F.interpolate(antialias=True)`` (torch's fast uint8 kernels, PIL-like filters), then one
      batched conversion + normalisation. On the CPU this reads only the crop and stays in uint8
      until the output, about 3x faster than ``grid``, and it antialiases like PIL. When the
      storage is not at the original resolution, box edges are rounded to storage pixels.

    On the CPU the whole forward runs with one intra-op thread (see :func:`_one_cpu_thread`).

    Args:
        cfg: the backbone's data config (size, mean, std, interpolation, crop_pct).
        augment: ``"standard"``, ``"light"`` or ``"none"``.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` for the crops (default
            ``cfg.interpolation``, like the stock transforms; ``"bilinear"`` is cheaper with ``grid``).
        impl: ``"auto"`` (``grid`` on CUDA, ``loop`` elsewhere), ``"grid"`` or ``"loop"``.
        out_dtype: output dtype (e.g. ``torch.bfloat16``); the arithmetic is float32.
        channels_last: return a channels_last tensor.
        generator: a ``torch.Generator`` on the CPU for the crop/flip draws (default: global RNG).

    ``forward(x, image_size=None)``: ``image_size`` (int ``[B, 2]``, the original ``(H, W)`` from
    ``DecodedImages(return_image_size=True)``) is only needed for datasets of mixed aspect ratios;
    by default the boxes are drawn for an image of the input's own ``(Hs, Ws)``. Random draws are
    made on the CPU whatever the device (same boxes on CPU and CUDA for the same seed).
    """

    def __init__(self, cfg: DataConfig, augment: str = "standard", *, interpolation: str | None = None,
                 impl: str = "auto", out_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise TransferConfigError(f"Unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}.")
        if impl not in ("auto", "grid", "loop"):
            raise TransferConfigError(f"impl must be 'auto', 'grid' or 'loop', got {impl!r}.")
        mode = interpolation or cfg.interpolation
        if mode not in _GRID_MODES:
            mode = "bilinear"  # the stock transforms' fallback for unknown names
        eval_mode = cfg.interpolation if cfg.interpolation in _GRID_MODES else "bilinear"
        self.augment, self.mode, self.eval_mode, self.impl = augment, mode, eval_mode, impl
        self.size = cfg.size
        self.crop_pct = float(cfg.crop_pct)
        self.out_dtype, self.channels_last, self.generator = out_dtype, channels_last, generator
        # buffers (not parameters): move with .to(device); not saved in state_dicts
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", 1.0 / (255.0 * self.std), persistent=False)
        self.register_buffer("shift", -self.mean / self.std, persistent=False)
        self.register_buffer("high", (1.0 - self.mean) / self.std, persistent=False)

    def extra_repr(self) -> str:
        return (f"augment={self.augment!r}, size={self.size}, mode={self.mode!r}, impl={self.impl!r}, "
                f"out_dtype={self.out_dtype}, channels_last={self.channels_last}")

    def forward(self, x: torch.Tensor, image_size: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment expects [B, 3, H, W], got {tuple(x.shape)}.")
        if x.dtype != torch.uint8:
            raise TypeError(f"BatchAugment expects uint8 pixels (DecodedImages), got {x.dtype}.")
        with _one_cpu_thread(x.device.type == "cpu"):
            if self.training and self.augment != "none":
                impl = self.impl if self.impl != "auto" else ("grid" if x.is_cuda else "loop")
                boxes = self._draw(x.shape[0], x.shape[2], x.shape[3], image_size)
                out = self._crops_grid(x, *boxes) if impl == "grid" else self._crops_loop(x, *boxes)
            else:
                out = self._eval_resize(x.float())
                out = out.div_(255.0).sub_(self.mean).div_(self.std)  # the same float32 ops as ToTensor + Normalize
            if out.dtype != self.out_dtype:
                out = out.to(self.out_dtype)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _eval_resize(self, x: torch.Tensor) -> torch.Tensor:
        hs, ws = x.shape[-2:]
        if (hs, ws) == (self.size, self.size):
            return x
        short = math.floor(self.size / self.crop_pct)
        if hs <= ws:
            new = (short, max(short, int(short * ws / hs)))
        else:
            new = (max(short, int(short * hs / ws)), short)
        mode = self.eval_mode if self.eval_mode != "nearest" else "nearest-exact"
        x = F.interpolate(x, size=new, mode=mode, antialias=mode in ("bilinear", "bicubic"),
                          align_corners=False if mode != "nearest-exact" else None)
        top, left = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        return x[..., top:top + self.size, left:left + self.size].clamp_(0, 255)

    @torch.compiler.disable
    def _draw(self, b: int, hs: int, ws: int, image_size: torch.Tensor | None):
        """Boxes as fractions of the image, ``(x0, y0, x1, y1)`` float64 ``[B]`` each, and flips."""
        if image_size is None:
            heights = torch.full((b,), hs, dtype=torch.int64)
            widths = torch.full((b,), ws, dtype=torch.int64)
        else:
            image_size = torch.as_tensor(image_size).to("cpu", torch.int64).reshape(b, 2)
            heights, widths = image_size[:, 0], image_size[:, 1]
        scale, ratio = CROP_RANGES[self.augment]
        top, left, h, w = sample_crop_params(heights, widths, scale, ratio, generator=self.generator)
        if FLIP[self.augment]:
            flip = torch.rand(b, generator=self.generator) < 0.5
        else:
            flip = torch.zeros(b, dtype=torch.bool)
        H, W = heights.double(), widths.double()
        return left / W, top / H, (left + w) / W, (top + h) / H, flip

    def _normalise(self, out: torch.Tensor) -> torch.Tensor:
        """0..255 values (any dtype) -> float32 ``(x / 255 - mean) / std``, in two passes."""
        return out.to(torch.float32).mul_(self.scale).add_(self.shift)

    def _crops_grid(self, x, x0, y0, x1, y1, flip) -> torch.Tensor:
        b = x.shape[0]
        dev = x.device
        # box centre and half-size in normalised [-1, 1] coordinates (align_corners=False: -1/+1
        # are the outer pixel edges); a flip negates the x scale
        cx, cy = x0 + x1 - 1, y0 + y1 - 1
        sx, sy = torch.where(flip, x0 - x1, x1 - x0), y1 - y0
        base = (torch.arange(self.size, dtype=torch.float64) * 2 + 1) / self.size - 1  # output pixel centres
        gx = (cx[:, None] + sx[:, None] * base[None, :]).float().to(dev, non_blocking=True)
        gy = (cy[:, None] + sy[:, None] * base[None, :]).float().to(dev, non_blocking=True)
        grid = torch.empty((b, self.size, self.size, 2), dtype=torch.float32, device=dev)
        grid[..., 0] = gx[:, None, :]
        grid[..., 1] = gy[:, :, None]
        # interpolation is linear in the pixel values: normalise the input, in the pass that
        # converts it to float anyway, rather than the output
        out = F.grid_sample(self._normalise(x), grid, mode=self.mode, padding_mode="border", align_corners=False)
        if self.mode == "bicubic":  # cubic overshoot; PIL clamps to [0, 255] too
            out = torch.maximum(torch.minimum(out, self.high), self.shift)
        return out

    @torch.compiler.disable
    def _crops_loop(self, x, x0, y0, x1, y1, flip) -> torch.Tensor:
        b, _, hs, ws = x.shape
        # box edges in storage pixels (exact when the storage is at the original resolution)
        c0 = torch.round(x0 * ws).long().clamp_(0, ws - 1)
        r0 = torch.round(y0 * hs).long().clamp_(0, hs - 1)
        c1 = torch.maximum(torch.round(x1 * ws).long().clamp_(max=ws), c0 + 1)
        r1 = torch.maximum(torch.round(y1 * hs).long().clamp_(max=hs), r0 + 1)
        in_uint8 = x.device.type == "cpu"  # torch's uint8 resize kernels are CPU ones
        src = x if in_uint8 else x.float()
        out = torch.empty((b, 3, self.size, self.size), dtype=src.dtype, device=x.device)
        aa = self.mode in ("bilinear", "bicubic")
        mode = self.mode if self.mode != "nearest" else "nearest-exact"
        for k, (a, bb, c, d, f) in enumerate(zip(r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist(), flip.tolist())):
            crop = F.interpolate(src[k:k + 1, :, a:bb, c:d], size=(self.size, self.size), mode=mode,
                                 antialias=aa, align_corners=False if aa else None)
            out[k] = crop[0].flip(-1) if f else crop[0]
        if not in_uint8:
            out.clamp_(0, 255)
        return self._normalise(out)


class AugmentingCollate:
    """A DataLoader ``collate_fn`` that runs :class:`BatchAugment` in the loader workers.

    For CPU-only training, where the main process is busy with the model: the batched
    augmentation then runs in parallel in the workers (one torch thread each), like the stock
    per-sample transforms do. On a GPU keep :class:`BatchAugment` in the model's forward instead.
    ``augment``'s train/eval mode is what it was when the workers started (use one loader, and one
    ``AugmentingCollate``, per mode). Augments ``pixel_values`` and ``target_pixel_values``; uses
    and drops ``image_size`` (and ``target_image_size``) when present.
    """

    def __init__(self, augment: BatchAugment, collate_fn=None):
        self.augment = augment
        self.collate_fn = collate_fn or collate_decoded

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = dict(self.collate_fn(examples))
        with torch.no_grad():
            for key, size_key in (("pixel_values", "image_size"), ("target_pixel_values", "target_image_size")):
                if key in batch:
                    batch[key] = self.augment(batch[key], batch.pop(size_key, None))
        return batch
