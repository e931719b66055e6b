"""Torch datasets the Trainer consumes: transformed image domains and paired source/target items.

Domain adaptation needs a labelled source image and an unlabelled target image in every batch.
Instead of a custom loader (which breaks DDP sharding and resume), :class:`PairedDataset` is an
ordinary map-style dataset, so the Trainer's own sampler shards it across processes, shuffles it
per epoch and skips to the right position on resume. Item ``i`` pairs source ``i mod Ns`` with
target ``(i * stride) mod Nt`` (``stride`` coprime with ``Nt``): one epoch visits every image of
the larger domain once and cycles the smaller one; the batch composition is random because the
indices are shuffled. Alignment losses are set-level, so which target image sits next to which
source image does not matter. Target labels are never returned.

``target_ratio`` r (target images per source image): every item carries ``k = ceil(r)`` target
images (item ``i``, slot ``j``: target ``((i * k + j) * stride) mod Nt``) and :func:`collate_paired`
keeps the first ``max(1, round(r * B))`` of a batch of ``B`` items, so every batch has exactly ``B``
source and ``round(r * B)`` target images. The length becomes ``max(Ns, ceil(Nt / k))``. It is still
one map-style dataset (sharding and resume unchanged); ``r = 1`` is exactly the layout above.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import datasets
import torch

from hf_transfer.data.transforms import ImageTransform, make_batch_transform


class ImageDomainDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` (image, label) as tensors through ``transform``."""

    def __init__(self, dataset: datasets.Dataset, transform: ImageTransform, with_labels: bool = True) -> None:
        self.dataset = dataset.with_transform(make_batch_transform(transform, with_labels=with_labels))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(i)]


def _coprime_stride(n: int) -> int:
    stride = max(1, int(n * 0.618))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


class ImageRows(Protocol):
    """What a paired dataset reads from each domain: rows of tensors by index (PIL-path or decoded-cache images)."""

    def __len__(self) -> int:
        """How many rows the domain has."""
        ...

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Row ``i``: its pixels, and its label and original size where the domain has them."""
        ...


class PairedDataset(torch.utils.data.Dataset):
    """Item ``i`` = source image + label, and an unlabelled target image (see module doc)."""

    def __init__(self, source: ImageRows, target: ImageRows, target_ratio: float = 1.0) -> None:
        if len(source) == 0 or len(target) == 0:
            raise ValueError("PairedDataset needs a non-empty source and target.")
        if not (math.isfinite(target_ratio) and target_ratio > 0):
            raise ValueError(f"target_ratio must be > 0, got {target_ratio}")
        self.source, self.target = source, target
        self.target_ratio = float(target_ratio)
        self.targets_per_item = math.ceil(self.target_ratio)
        self.stride = _coprime_stride(len(target))

    def __len__(self) -> int:
        return max(len(self.source), math.ceil(len(self.target) / self.targets_per_item))

    def target_index(self, i: int, slot: int = 0) -> int:
        """The target row paired with item ``i`` in ``slot``: a coprime stride visits every target row evenly."""
        return ((i * self.targets_per_item + slot) * self.stride) % len(self.target)

    def __getitem__(self, i: int) -> dict:
        return self._pair(self.source[i % len(self.source)], [self.target[j] for j in self._target_rows(i)])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """The same items as :meth:`__getitem__`, each domain's rows read in one gather where the rows offer it (the
        decoded cache: one memmap read, or one batched JPEG decode, per domain and batch)."""
        k = self.targets_per_item
        sources = _gather(self.source, [int(i) % len(self.source) for i in indices])
        targets = _gather(self.target, [j for i in indices for j in self._target_rows(int(i))])
        return [self._pair(src, targets[n * k : (n + 1) * k]) for n, src in enumerate(sources)]

    def _target_rows(self, i: int) -> list[int]:
        return [self.target_index(i, j) for j in range(self.targets_per_item)]

    @staticmethod
    def _pair(src: dict, targets: list[dict]) -> dict:
        """One item from its source row and its ``targets_per_item`` target rows."""
        item = {key: src[key] for key in ("pixel_values", "labels", "image_size") if key in src}
        for key in ("pixel_values", "image_size"):  # image_size: mixed-size decoded images (data.decoded)
            if key in targets[0]:
                item[f"target_{key}"] = targets[0][key] if len(targets) == 1 else torch.stack([t[key] for t in targets])
        return item


def _gather(rows: ImageRows, indices: list[int]) -> list[dict]:
    """``rows[i]`` for every index, in one ``__getitems__`` call where the rows have it."""
    many = getattr(rows, "__getitems__", None)
    return many(indices) if many is not None else [rows[i] for i in indices]


class IndexedRows(torch.utils.data.Dataset):
    """Rows of one domain, each with its index in the domain (``row_index``): for methods that keep something per
    image (a source-free method's pseudo-label or memory-bank row). Still one map-style dataset, so the Trainer's
    sampler shards and resumes it as any other."""

    def __init__(self, rows: ImageRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[int(i)], "row_index": int(i)}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """One gather for a whole batch where the rows offer it (the decoded cache)."""
        items = _gather(self.rows, [int(i) for i in indices])
        return [{**item, "row_index": int(i)} for item, i in zip(items, indices, strict=True)]


#: per-image tensors a batch carries: pixels, and the original ``(H, W)`` of mixed-size decoded images
_STACKED = ("pixel_values", "target_pixel_values", "image_size", "target_image_size")


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack pixel tensors (and image sizes); labels and row indices to int64. Works for plain and paired items."""
    batch = {key: torch.stack([e[key] for e in examples]) for key in _STACKED if key in examples[0]}
    for key in ("labels", "row_index"):
        if key in examples[0]:
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
    return batch


def collate_paired(examples: list[dict], target_ratio: float = 1.0) -> dict[str, torch.Tensor]:
    """Collate paired items: :func:`collate_images`, then keep ``max(1, round(target_ratio * B))`` target images.

    See the module docstring."""
    if not examples or "target_pixel_values" not in examples[0]:
        return collate_images(examples)
    target_keys = [k for k in ("target_pixel_values", "target_image_size") if k in examples[0]]
    batch = collate_images([{k: v for k, v in e.items() if k not in target_keys} for e in examples])
    n_target = max(1, round(target_ratio * len(examples)))
    for key in target_keys:
        one_ndim = 3 if key == "target_pixel_values" else 1  # one image [3, H, W], one size [2]
        stacked = torch.cat([e[key] if e[key].ndim > one_ndim else e[key].unsqueeze(0) for e in examples])
        if n_target > len(stacked):
            raise ValueError(
                f"a batch of {len(examples)} items holds {len(stacked)} target images, fewer than the "
                f"{n_target} that target_ratio={target_ratio} asks for"
            )
        batch[key] = stacked[:n_target]
    return batch
