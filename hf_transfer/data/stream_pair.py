"""Domain mode's streamed training input: the source's and the target's training streams, zipped.

The map-style :class:`~hf_transfer.data.paired.PairedDataset` pairs rows by index; two streams have no index, so
:class:`PairedStreams` pairs them by position: each source item is joined by the next ``ceil(target_ratio)`` target
images, in the same item layout as ``PairedDataset`` (``target_pixel_values``, ``target_image_size``), and
:func:`~hf_transfer.data.paired.collate_paired` keeps ``round(target_ratio * B)`` target images of a batch of ``B``,
as without streaming. Both streams repeat endlessly (:class:`~hf_transfer.data.stream.StreamedImages`), each on its
own passes, so the smaller domain cycles as the map-style path cycles it; ``max_steps`` ends the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from hf_transfer.data.stream import StreamedImages
from hf_transfer.errors import TransferConfigError


class PairedStreams(torch.utils.data.IterableDataset):
    """Source items (pixels, label, size) each with ``ceil(target_ratio)`` unlabelled target images (module doc)."""

    def __init__(self, source: StreamedImages, target: StreamedImages, target_ratio: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(target_ratio) and target_ratio > 0):
            raise ValueError(f"target_ratio must be > 0, got {target_ratio}")
        if target.with_labels:
            raise ValueError("the target stream of a paired stream is read without its labels")
        self.source, self.target = source, target
        self.target_ratio = float(target_ratio)
        self.targets_per_item = math.ceil(self.target_ratio)

    def check_loader_workers(self, num_workers: int) -> None:
        """Refuse ``num_workers`` loader workers that would not share both streams' shards alike.

        datasets gives each worker its own shards of each stream, none to a worker beyond a stream's shard count:
        such a worker would hold source shards and no target image (or target shards never trained on)."""
        shards = {"source": self.source.stream.n_shards, "target": self.target.stream.n_shards}
        if num_workers > 0 and min(num_workers, shards["source"]) != min(num_workers, shards["target"]):
            raise TransferConfigError(
                f"dataloader_num_workers={num_workers}: with --streaming in domain mode each loader worker reads its "
                f"own shards of both streams, and this process has {shards['source']} source and "
                f"{shards['target']} target shard(s). Use at most {min(shards.values())} workers, or store both "
                "training splits in as many shards as workers."
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        targets = iter(self.target)
        k = self.targets_per_item
        for src in self.source:  # endless: the Trainer stops at max_steps
            item = dict(src)
            drawn = [next(targets) for _ in range(k)]
            for key in ("pixel_values", "image_size"):
                if key in drawn[0]:
                    item[f"target_{key}"] = drawn[0][key] if k == 1 else torch.stack([t[key] for t in drawn])
            yield item


__all__ = ["PairedStreams"]
