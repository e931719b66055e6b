"""A dataset built on first use: a streaming run's evaluation images, checked and decoded at the first evaluation.

A streaming run must start training without a pass over anything whose size grows with the dataset. Its test split
is held in memory as stored bytes (:mod:`hf_transfer.data.stream`), but checking every image and decoding it into
the evaluation cache is such a pass (5,000 test images of a 50k-image set: about half a minute on one CPU thread).
:class:`DeferredDataset` runs that work when the Trainer first asks the dataset for anything (its length, an item,
an attribute): at the first evaluation, where every process is at the same point, so the decode's
main-process-first barrier stays safe under DDP. Written by hand: torch and datasets have no lazily built map-style
dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class DeferredDataset(torch.utils.data.Dataset):
    """The dataset ``build()`` returns, built the first time anything of it is used."""

    def __init__(self, build: Callable[[], torch.utils.data.Dataset], description: str = "dataset") -> None:
        self._build: Callable[[], torch.utils.data.Dataset] | None = build
        self._dataset: torch.utils.data.Dataset | None = None
        self._description = description

    @property
    def is_built(self) -> bool:
        """Whether the first use has happened (the check and decode ran)."""
        return self._dataset is not None

    def built(self) -> torch.utils.data.Dataset:
        """The dataset, built now if this is its first use."""
        if self._dataset is None:
            assert self._build is not None, "built once, then the builder is dropped"
            self._dataset, self._build = self._build(), None
        return self._dataset

    def __len__(self) -> int:
        return len(self.built())  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.built()[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        dataset = self.built()
        getitems = getattr(dataset, "__getitems__", None)
        return list(getitems(indices)) if getitems is not None else [dataset[i] for i in indices]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickling and copying look these up before __init__ has run
            raise AttributeError(name)
        return getattr(self.built(), name)

    def __repr__(self) -> str:
        return f"DeferredDataset({self._description}, built={self.is_built})"
