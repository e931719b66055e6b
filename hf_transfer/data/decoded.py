"""Fast input path, first half: decode once into a memory-mapped uint8 cache.

The stock path (:class:`~hf_transfer.data.paired.ImageDomainDataset` + the torchvision PIL
transforms of :mod:`hf_transfer.data.transforms`) decodes every image and runs
``RandomResizedCrop``/``ToTensor``/``Normalize`` per sample, every epoch, on the loader's CPU
workers. The fast path splits that work in two: this module decodes once, and
:class:`~hf_transfer.data.augment.BatchAugment` turns the uint8 batches into augmented, normalised
ones on the model's device.

:class:`DecodedImages`
    decodes a ``datasets.Dataset`` ONCE into a ``uint8`` array ``[N, 3, Hs, Ws]`` stored as an
    ``.npy`` file and opened as a ``np.memmap`` (never the whole dataset in RAM). Items are
    ``{"pixel_values": uint8 [3, Hs, Ws], "labels": int}``, so the loader only copies bytes.

Storage (what ``DecodedImages`` keeps)
--------------------------------------
``split_kind="eval"``: exactly the stock eval preprocessing before ``ToTensor``: the PIL image
converted to RGB (:func:`hf_transfer.data.images.to_rgb`) and the resize and crop of
:func:`~hf_transfer.data.transforms.eval_geometry` (timm's, for the config's ``crop_mode``: center, squash or
border), the same functions. ``BatchAugment`` in eval
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
travels with the batch. Otherwise (mixed sizes: one odd image is enough) the items carry ``image_size``
(the original ``(H, W)``; ``return_image_size=None``, the default, turns it on exactly then), the
collate functions keep it and the model's forward hands it to ``BatchAugment``, so the boxes are drawn
for each image's own size and the crop distribution stays exact. An image of another size is squashed
into the storage shape: its crops are resampled from that storage, which only changes their resolution
(like any image larger than the storage).

Cache
-----
Files live under ``cache_dir`` (default ``$HF_TRANSFER_CACHE/decoded``, else
``~/.cache/hf_transfer/decoded``) in one folder per key: the dataset's ``_fingerprint``, image
column, kind, size, storage size, interpolation, crop_pct and :data:`DECODED_VERSION`. The folder is
written in a staging folder named after the writing process and renamed into place, so an
interrupted or failed decode never leaves a cache that a later run would trust; staging folders of
killed writers are removed by the next construction (:func:`hf_transfer.runtime.cache.remove_stale_staging`).
``meta.json``, written last, records each file's size and checksum; the first construction in a process
checks them (a file truncated or zeroed on disk later), and a bad or unrecorded entry is removed with a
warning naming it and decoded again (:func:`hf_transfer.runtime.cache.entry_problem`). Later constructions in
the same process only open the memmap. The space the cache needs is checked, and its file's blocks
reserved, before decoding starts: a full disk is an error naming the folder and the megabytes, never
SIGBUS (:mod:`hf_transfer.runtime.disk`).

Compact storage (``storage_format="jpeg"``)
-------------------------------------------
The same resized uint8 images, each stored as a JPEG file at ``jpeg_quality`` (FFCV-style): the files of an entry
are concatenated in one memory-mapped ``jpeg.bin`` with their ``offsets.npy``, and a batch is decoded by one call
of torchvision's decoder where the batch is gathered (the DataLoader's worker processes when
``dataloader_num_workers`` > 0, else the main process). Which decoder (:func:`jpeg_decode_device`): nvjpeg, straight
onto the model's CUDA device, when the batch is gathered in the main process of a CUDA run (``decode_device``); else
libjpeg-turbo on the CPU (always in worker processes: a forked worker cannot use CUDA). Decoding the same bytes
gives the same pixels every time on the same decoder, so training, its random crops and resume stay exact; only the
JPEG rounding of the stored pixels differs from ``"raw"`` (a separate cache entry). nvjpeg's pixels may differ from
libjpeg-turbo's by a few levels (its IDCT and chroma upsampling are its own): a run resumed on the same kind of
device continues exactly, one resumed on the other decoder sees slightly different pixels.
``storage_format="auto"`` (:func:`resolve_storage_format`) keeps raw pixels
while they fit in a quarter of the machine's RAM (the page cache then serves every epoch without decoding)
and stores JPEG beyond that.

An image that cannot be decoded is an error naming its row (the data loading checks every image
before training, see :mod:`hf_transfer.data.load`, so this only fires for direct use).

This module is part of the data layer: it imports nothing from ``hf_transfer`` outside
``hf_transfer.data`` and the shared ``hf_transfer.errors`` and ``hf_transfer.runtime.cache``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hf_transfer.data.decode import (
    DecodeChunks,
    decode_jpeg_rows,
    encode_jpeg_rows,
    header_sizes,
    in_threads,
    split_storage_shape,
)
from hf_transfer.data.transforms import AUGMENTATIONS, DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.runtime.cache import (
    FILES_RECORD,
    cache_path,
    discard_entry,
    entry_problem,
    file_records,
    remove_stale_staging,
    staged_entry,
)
from hf_transfer.runtime.disk import allocated_memmap, space_errors

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "DECODED_VERSION",
    "STORAGE_FORMATS",
    "JPEG_DECODERS",
    "DecodedImages",
    "collate_decoded",
    "decoded_cache_dir",
    "jpeg_decode_device",
    "jpeg_decoder",
    "resolve_storage_format",
    "split_kind_for",
]

#: Bump whenever the stored bytes for the same inputs change: it is part of the cache key.
DECODED_VERSION = "3"  # 2: the train storage shape no longer comes from the first image; 3: crop_mode, 16-bit images

SPLIT_KINDS = ("train", "eval")
#: how the decoded images are stored (``--decode_cache_format``; ``auto`` picks one by size)
STORAGE_FORMATS = ("raw", "jpeg", "auto")
#: which decoder reads a JPEG entry back: libjpeg-turbo on the CPU, or nvjpeg on a CUDA device
JPEG_DECODERS = ("cpu", "nvjpeg")
#: ``auto`` stores JPEG once the raw pixels would take more than this fraction of the machine's RAM
AUTO_RAW_FRACTION = 0.25


def machine_memory_bytes() -> int:
    """Physical RAM of this machine (what the page cache can hold at most)."""
    return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def check_storage_format(storage_format: str, jpeg_quality: int = 90) -> str:
    """``storage_format`` when it names a storage format and the quality is valid, else the error naming them."""
    if storage_format not in STORAGE_FORMATS:
        raise TransferConfigError(
            f"decode_cache_format={storage_format!r}: choose one of {', '.join(STORAGE_FORMATS)}."
        )
    if not 1 <= int(jpeg_quality) <= 100:
        raise TransferConfigError(f"decode_cache_quality={jpeg_quality}: give a JPEG quality from 1 to 100.")
    return storage_format


def resolve_storage_format(storage_format: str, raw_bytes: int, memory_bytes: int | None = None) -> str:
    """``"raw"`` or ``"jpeg"``: ``auto`` is raw while ``raw_bytes`` fit in :data:`AUTO_RAW_FRACTION` of the RAM."""
    check_storage_format(storage_format)
    if storage_format != "auto":
        return storage_format
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    return "raw" if raw_bytes <= AUTO_RAW_FRACTION * memory else "jpeg"


def jpeg_decode_device(device: torch.device | str, num_workers: int) -> torch.device:
    """Where a JPEG entry's batches are decoded: on the GPU by nvjpeg, or on the CPU.

    The model's CUDA ``device`` when the main process gathers them (``num_workers == 0``), else the CPU (libjpeg-turbo;
    worker processes must not touch CUDA)."""
    device = torch.device(device)
    return device if device.type == "cuda" and int(num_workers) == 0 else torch.device("cpu")


def jpeg_decoder(storage_format: str, device: torch.device | str, num_workers: int) -> str | None:
    """The decoder (:data:`JPEG_DECODERS`) that reads ``storage_format`` entries back, None for ``"raw"``."""
    if check_storage_format(storage_format) == "raw":
        return None
    return "nvjpeg" if jpeg_decode_device(device, num_workers).type == "cuda" else "cpu"


def decoded_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$HF_TRANSFER_CACHE/decoded``, else ``~/.cache/hf_transfer/decoded``."""
    return cache_path("decoded", cache_dir)


def split_kind_for(augment: str, train: bool) -> str:
    """The :class:`DecodedImages` kind a split needs: ``"train"`` only for augmented training data."""
    if augment not in AUGMENTATIONS:
        raise TransferConfigError(f"Unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}.")
    return "train" if train and augment != "none" else "eval"


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
        num_workers: decoding processes (0: decode in this process, in ``torch.get_num_threads()`` threads).
        chunk_size: rows decoded per step (bounds the RAM used while decoding).
        progress: show a tqdm bar while decoding (None: only on a terminal).
        cache_key: use this instead of the dataset's ``_fingerprint`` (for datasets without one).
        storage_format: ``"raw"`` (uint8 pixels), ``"jpeg"`` (each image a JPEG file at ``jpeg_quality``) or
            ``"auto"`` (by size, :func:`resolve_storage_format`); see the module doc.
        decode_device: where the batches of a JPEG entry are decoded when the main process gathers them (a CUDA
            device: nvjpeg, see :func:`jpeg_decode_device`); DataLoader worker processes always decode on the CPU.

    Items: ``{"pixel_values": uint8 [3, Hs, Ws], "labels": int}`` (+ ``image_size``). After
    construction: ``path`` (the cache folder), ``storage_hw``, ``image_sizes`` (``[N, 2]``),
    ``same_size`` (all images have one original size), ``decoded`` (whether this
    construction had to decode, False on a cache hit), ``jpeg_decoder`` (``"cpu"``, ``"nvjpeg"``, None when raw).
    """

    def __init__(
        self,
        dataset: Dataset,
        cfg: DataConfig,
        split_kind: str = "train",
        cache_dir: str | os.PathLike[str] | None = None,
        with_labels: bool = True,
        *,
        storage_size: int | None = None,
        image_column: str = "image",
        label_column: str = "label",
        return_image_size: bool | None = None,
        num_workers: int = 0,
        chunk_size: int = 256,
        progress: bool | None = None,
        cache_key: str | None = None,
        storage_format: str = "raw",
        jpeg_quality: int = 90,
        decode_device: torch.device | str = "cpu",
    ) -> None:
        check_storage_format(storage_format, jpeg_quality)
        self.decode_device = torch.device(decode_device)
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
                "pass with_labels=False for unlabelled data."
            )
        fingerprint = cache_key or getattr(dataset, "_fingerprint", None)
        if not fingerprint:
            raise TransferConfigError("The dataset has no _fingerprint: pass cache_key= to name its cache.")
        self.cfg, self.split_kind = cfg, split_kind
        self.with_labels = with_labels
        self.size = cfg.size
        self.storage_size = int(storage_size or math.floor(cfg.size / cfg.crop_pct))
        if self.storage_size < 1:
            raise TransferConfigError(f"storage_size must be positive, got {storage_size}.")
        key_fields: dict[str, Any] = {
            "fingerprint": fingerprint,
            "image_column": image_column,
            "kind": split_kind,
            "size": self.size,
            "interpolation": cfg.interpolation,
            "version": DECODED_VERSION,
        }
        if split_kind == "eval":
            key_fields["crop_pct"] = float(cfg.crop_pct)
            key_fields["crop_mode"] = cfg.crop_mode
            if cfg.crop_mode == "border":  # the padding colour
                key_fields["border_fill"] = list(cfg.border_fill)
        else:
            key_fields["storage_size"] = self.storage_size
        side = self.size if split_kind == "eval" else self.storage_size  # an estimate for train: the short side
        self.storage_format = resolve_storage_format(storage_format, len(dataset) * 3 * side * side)
        if self.storage_format == "jpeg":  # raw entries keep the keys they had before the option existed
            key_fields["format"], key_fields["jpeg_quality"] = "jpeg", int(jpeg_quality)
        self.jpeg_quality = int(jpeg_quality)
        digest = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
        label = self.size if split_kind == "eval" else self.storage_size
        self.root = decoded_cache_dir(cache_dir)
        self.path = self.root / f"{split_kind}-{label}-{digest}"
        self.decoded = False
        remove_stale_staging(self.root)
        if self.path.exists() and (problem := entry_problem(self.path)) is not None:
            discard_entry(self.path, problem, "decoded-image cache")
        if not self.path.exists():
            self._build(dataset, key_fields, image_column, num_workers, chunk_size, progress)
            self.decoded = True
        self._mm: np.memmap | None = None
        self.image_sizes = np.load(self.path / "sizes.npy")
        if self.storage_format == "jpeg":
            self.offsets = np.load(self.path / "offsets.npy")
            hw = json.loads((self.path / "meta.json").read_text())["storage_hw"]
            stored, self.storage_hw = len(self.offsets) - 1, (int(hw[0]), int(hw[1]))
        else:
            arr = self.images  # opens the memmap, checks the file
            stored, self.storage_hw = len(arr), (int(arr.shape[2]), int(arr.shape[3]))
        if stored != len(dataset) or len(self.image_sizes) != len(dataset):
            raise TransferConfigError(
                f"Decoded cache {self.path} holds {stored} images for a dataset of {len(dataset)}; "
                "delete the folder to rebuild it."
            )
        self.same_size = bool(len(dataset) == 0 or np.all(self.image_sizes == self.image_sizes[0]))
        self.return_image_size = not self.same_size if return_image_size is None else return_image_size
        self.labels = np.asarray(dataset[label_column], dtype=np.int64) if with_labels else None

    # -- cache ------------------------------------------------------------------------------

    def _build(
        self,
        dataset: Dataset,
        key_fields: dict[str, Any],
        image_column: str,
        num_workers: int,
        chunk_size: int,
        progress: bool | None,
    ) -> None:
        from tqdm.auto import tqdm

        n = len(dataset)
        src = dataset.select_columns([image_column]).with_format(None)
        if self.split_kind == "eval":
            storage_hw = (self.size, self.size)
        else:
            storage_hw = split_storage_shape(header_sizes(src, image_column), self.storage_size)
        kwargs = {
            "image_column": image_column,
            "kind": self.split_kind,
            "size": self.size,
            "crop_pct": float(self.cfg.crop_pct),
            "interpolation": self.cfg.interpolation,
            "crop_mode": self.cfg.crop_mode,
            "mean": tuple(self.cfg.mean),
            "storage_hw": storage_hw,
        }
        nbytes = n * (3 * storage_hw[0] * storage_hw[1] + 8)  # the images and their sizes
        jpeg = self.storage_format == "jpeg"
        with (
            staged_entry(self.root, self.path.name, done="meta.json") as tmp,
            space_errors(self.root, nbytes),
            contextlib.ExitStack() as files_open,
        ):
            if jpeg:  # the files' sizes are known once encoded: written as they come, ENOSPC named by space_errors
                images: Any = files_open.enter_context(open(tmp / "jpeg.bin", "wb"))
                offsets = np.zeros(n + 1, dtype=np.int64)
            else:
                images = allocated_memmap(tmp / "images.npy", np.uint8, (n, 3, *storage_hw))
            sizes = np.zeros((n, 2), dtype=np.int32)
            threads = torch.get_num_threads() if num_workers == 0 else 1
            chunk = max(1, int(chunk_size))
            if threads > 1:  # chunks small enough that every thread gets a few
                chunk = min(chunk, -(-n // (4 * threads)))
            chunks = DecodeChunks(src, chunk, **kwargs)
            # a DataLoader with batch_size=None hands the chunk's arrays over as tensors
            loader: Iterable[tuple[int, np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]]
            if num_workers > 0:
                loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=num_workers)
            else:
                loader = in_threads(chunks, threads)
            with tqdm(
                total=n,
                unit="img",
                desc=f"decoding {self.split_kind} images",
                disable=(not progress) if progress is not None else None,
            ) as bar:
                for start, arr, sz in loader:
                    start = int(start)
                    arr, sz = np.asarray(arr), np.asarray(sz)
                    if jpeg:  # chunks come in order: each one's files follow the previous one's
                        payload, lengths = encode_jpeg_rows(arr, self.jpeg_quality)
                        images.write(payload.tobytes())
                        offsets[start + 1 : start + len(arr) + 1] = offsets[start] + np.cumsum(lengths)
                    else:
                        images[start : start + len(arr)] = arr
                    sizes[start : start + len(arr)] = sz
                    bar.update(len(arr))
            if jpeg:
                images.close()
                np.save(tmp / "offsets.npy", offsets)
            else:
                images.flush()
            del images
            np.save(tmp / "sizes.npy", sizes)
            names = ["jpeg.bin", "offsets.npy", "sizes.npy"] if jpeg else ["images.npy", "sizes.npy"]
            files = file_records(tmp, names)  # last: a record means the data is complete
            (tmp / "meta.json").write_text(
                json.dumps(
                    {**key_fields, "storage_hw": list(storage_hw), "num_images": n, FILES_RECORD: files}, indent=1
                )
            )

    @property
    def images(self) -> np.memmap:
        """The read-only ``uint8 [N, 3, Hs, Ws]`` memmap of a raw entry (opened lazily, once per process)."""
        if self.storage_format != "raw":
            raise AttributeError("a JPEG entry has no pixel array: index the dataset (its items are decoded)")
        if self._mm is None:
            self._mm = np.load(self.path / "images.npy", mmap_mode="r")
        return self._mm

    @property
    def jpeg_decoder(self) -> str | None:
        """The decoder that reads this entry back in the main process (:data:`JPEG_DECODERS`), None for raw."""
        if self.storage_format != "jpeg":
            return None
        return "nvjpeg" if self.decode_device.type == "cuda" else "cpu"

    @property
    def stored_bytes(self) -> int:
        """Bytes of the entry's image data on disk (``images.npy`` or ``jpeg.bin``)."""
        return os.path.getsize(self.path / ("jpeg.bin" if self.storage_format == "jpeg" else "images.npy"))

    def _jpeg_pixels(self, idx: np.ndarray) -> torch.Tensor:
        """The rows ``idx`` of a JPEG entry, decoded: uint8 ``[k, 3, Hs, Ws]`` on ``decode_device`` (the CPU in a
        DataLoader worker process)."""
        if self._mm is None:
            self._mm = np.memmap(self.path / "jpeg.bin", dtype=np.uint8, mode="r")
        blob = self._mm
        files = [torch.from_numpy(np.array(blob[self.offsets[i] : self.offsets[i + 1]])) for i in idx]
        in_worker = torch.utils.data.get_worker_info() is not None
        return decode_jpeg_rows(files, "cpu" if in_worker else self.decode_device)

    def __getstate__(self) -> dict[str, Any]:  # worker processes reopen the memmap instead of pickling its bytes
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    # -- items ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.image_sizes)

    def _item(self, i: int, pixels: torch.Tensor) -> dict:
        item: dict[str, Any] = {"pixel_values": pixels}
        if self.with_labels:
            assert self.labels is not None, "__init__ reads the labels whenever with_labels is set"
            item["labels"] = int(self.labels[i])
        if self.return_image_size:
            item["image_size"] = torch.from_numpy(self.image_sizes[i].astype(np.int64))
        return item

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            i += len(self)
        if self.storage_format == "jpeg":
            return self._item(i, self._jpeg_pixels(np.array([i]))[0])
        return self._item(i, torch.from_numpy(np.array(self.images[i])))

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """One gather from the memmap for a whole batch (used by DataLoader's auto-collation)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.storage_format == "jpeg":
            pixels = self._jpeg_pixels(idx)
        else:
            pixels = torch.from_numpy(self.images[idx])  # fancy indexing copies into RAM
        return [self._item(int(i), pixels[k]) for k, i in enumerate(idx)]


def collate_decoded(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack every tensor key (``pixel_values``, ``target_pixel_values``, ``image_size``, ...), labels to int64.

    Same output as :func:`~hf_transfer.data.paired.collate_images` plus the extra keys."""
    batch: dict[str, torch.Tensor] = {}
    for key, value in examples[0].items():
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack([e[key] for e in examples])
        else:
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
    return batch
