"""Keep only some classes of a domain: how the standard partial-DA benchmarks are made.

Office-31 (31 -> 10 classes) and Office-Home (65 -> 25) partial tasks use the whole source and a
target restricted to a subset of its classes (the first ``K`` in alphabetical order in the papers).
``select_classes`` drops the other rows AND re-declares the ``ClassLabel`` with the kept names, so
the restricted target declares only what it holds (what ``partial_weighting=exclude`` reads).
"""

from __future__ import annotations

import datasets
import numpy as np

from ..errors import TransferConfigError
from .columns import LABEL_COLUMN


def parse_class_selection(spec: str, names: list[str], option: str = "target_classes") -> list[str]:
    """``first:K`` (the first K names in the dataset's label order) or comma-separated class names."""
    spec = spec.strip()
    if spec.startswith("first:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise TransferConfigError(f"{option}={spec!r}: use first:K with an integer K.") from None
        if not 1 <= k <= len(names):
            raise TransferConfigError(f"{option}={spec!r}: K must be in 1..{len(names)} (the dataset has "
                                      f"{len(names)} classes).")
        return list(names[:k])
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    lookup = {n.strip().lower(): n for n in names}
    missing = [w for w in wanted if w.lower() not in lookup]
    if missing or not wanted:
        raise TransferConfigError(f"{option}={spec!r}: {missing or 'no class'} not among the dataset's classes "
                                  f"{names[:12]}{'...' if len(names) > 12 else ''}.")
    return list(dict.fromkeys(lookup[w.lower()] for w in wanted))


def select_classes(dsd: datasets.DatasetDict, spec: str | None, option: str = "target_classes") -> datasets.DatasetDict:
    """The rows of the chosen classes in every split, with a ``ClassLabel`` of those names only."""
    if not spec:
        return dsd
    split = next(iter(dsd.values()))
    names = list(split.features[LABEL_COLUMN].names)
    kept = parse_class_selection(spec, names, option)
    old_ids = {names.index(n): i for i, n in enumerate(kept)}
    out = {}
    for key, ds in dsd.items():
        labels = np.asarray(ds[LABEL_COLUMN], dtype=np.int64)
        rows = ds.select(np.flatnonzero(np.isin(labels, list(old_ids))))
        if len(rows) == 0:
            raise TransferConfigError(f"{option}={spec!r}: the {key!r} split has no row of {kept}.")
        features = rows.features.copy()
        features[LABEL_COLUMN] = datasets.ClassLabel(names=kept)
        out[key] = rows.map(lambda batch: {LABEL_COLUMN: [old_ids[y] for y in batch[LABEL_COLUMN]]}, batched=True,
                            features=features, desc=f"{option}: {key}")
    return datasets.DatasetDict(out)
