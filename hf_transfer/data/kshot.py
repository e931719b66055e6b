"""Seeded row selections: :func:`subset` (at most ``n`` rows: ``max_*_samples``) and k-shot target data (keep
``k`` labelled images per class, chosen with a seed).

The same (dataset, k, seed) always gives the same images, and the selection for a larger ``k``
contains the one for a smaller ``k`` with the same seed (one seeded order, the first ``k`` of each
class), so a k-sweep adds labels rather than redrawing them.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
import numpy.typing as npt

from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)


def subset(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """A seeded subset of at most ``n`` rows (the whole dataset when ``n`` is None)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def kshot_indices(labels: npt.ArrayLike, k: int | None, seed: int) -> list[int]:
    """Row indices: the first ``k`` rows of each class in a seeded permutation (sorted)."""
    if k is None or int(k) < 1:
        raise TransferConfigError(f"k_shot={k!r}: must be a positive number of labelled images per class.")
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    taken: dict[int, int] = {}
    keep = []
    for i in order:
        c = int(labels[i])
        if taken.get(c, 0) < k:
            taken[c] = taken.get(c, 0) + 1
            keep.append(int(i))
    short = {c: n for c, n in taken.items() if n < k}
    if short:
        logger.warning("k_shot=%d: classes %s have fewer images (%s); using all of them.", k, sorted(short), short)
    return sorted(keep)


def kshot(ds: datasets.Dataset, k: int, seed: int, label_column: str = "label") -> datasets.Dataset:
    """``ds`` reduced to ``k`` labelled rows per class (seeded)."""
    if label_column not in ds.column_names:
        raise TransferConfigError(f"k_shot: no label column {label_column!r} in {ds.column_names}.")
    return ds.select(kshot_indices(ds[label_column], k, seed))
