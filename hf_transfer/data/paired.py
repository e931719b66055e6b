"""Torch datasets the Trainer consumes: transformed image domains and paired source/target items.

Domain adaptation needs a labelled source image and an unlabelled target image in every batch.
Instead of a custom loader (which breaks DDP sharding and resume), :class:`PairedDataset` is an
ordinary map-style dataset, so the Trainer's own sampler shards it across processes, shuffles it
per epoch and skips to the right position on resume. Item ``i`` pairs source ``i mod Ns`` with
target ``(i * stride) mod Nt`` (``stride`` coprime with ``Nt``): one epoch visits every image of
the larger domain once and cycles the smaller one; the batch composition is random because the
indices are shuffled. Alignment losses are set-level, so which target image sits next to which
source image does not matter. Target labels are never returned.
"""

from __future__ import annotations

import math

import torch

from .transforms import make_batch_transform


class ImageDomainDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` (image, label) as tensors through ``transform``."""

    def __init__(self, dataset, transform, with_labels: bool = True):
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


class PairedDataset(torch.utils.data.Dataset):
    """Item ``i`` = source image + label, and an unlabelled target image (see module doc)."""

    def __init__(self, source: ImageDomainDataset, target: ImageDomainDataset):
        if len(source) == 0 or len(target) == 0:
            raise ValueError("PairedDataset needs a non-empty source and target.")
        self.source, self.target = source, target
        self.stride = _coprime_stride(len(target))

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def target_index(self, i: int) -> int:
        return (i * self.stride) % len(self.target)

    def __getitem__(self, i: int) -> dict:
        src = self.source[i % len(self.source)]
        tgt = self.target[self.target_index(i)]
        return {"pixel_values": src["pixel_values"], "labels": src["labels"],
                "target_pixel_values": tgt["pixel_values"]}


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack pixel tensors; labels to int64. Works for plain and paired items."""
    batch = {key: torch.stack([e[key] for e in examples]) for key in ("pixel_values", "target_pixel_values")
             if key in examples[0]}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    return batch
