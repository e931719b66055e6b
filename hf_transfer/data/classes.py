"""Keep only some classes of a domain: how the standard partial-DA benchmarks are made.

Office-31 (31 -> 10 classes) and Office-Home (65 -> 25) partial tasks use the whole source and a
target restricted to a subset of its classes (Office-Home: the first 25 in alphabetical order,
``first:25``; Office-31: the 10 classes it shares with Caltech-256, given by name).
``select_classes`` drops the other rows AND re-declares the ``ClassLabel`` with the kept names, so
the restricted target declares only what it holds (what ``partial_weighting=exclude`` reads). It is
:func:`~hf_transfer.data.align.remap_labels` with the chosen names (unlabelled rows, -1, stay).
"""

from __future__ import annotations

import datasets

from hf_transfer.data.align import remap_labels
from hf_transfer.data.class_names import class_key
from hf_transfer.data.columns import LABEL_COLUMN
from hf_transfer.errors import TransferConfigError


def parse_class_selection(spec: str, names: list[str], option: str = "target_classes") -> list[str]:
    """``first:K`` (the first K names in the dataset's label order) or comma-separated class names."""
    spec = spec.strip()
    if spec.startswith("first:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise TransferConfigError(f"{option}={spec!r}: use first:K with an integer K.") from None
        if not 1 <= k <= len(names):
            raise TransferConfigError(
                f"{option}={spec!r}: K must be in 1..{len(names)} (the dataset has {len(names)} classes)."
            )
        return list(names[:k])
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    lookup = {class_key(n): n for n in names}  # matched as align.py matches domains
    missing = [w for w in wanted if class_key(w) not in lookup]
    if missing or not wanted:
        raise TransferConfigError(
            f"{option}={spec!r}: {missing or 'no class'} not among the dataset's classes "
            f"{names[:12]}{'...' if len(names) > 12 else ''}."
        )
    return list(dict.fromkeys(lookup[class_key(w)] for w in wanted))


def select_classes(dsd: datasets.DatasetDict, spec: str | None, option: str = "target_classes") -> datasets.DatasetDict:
    """The rows of the chosen classes in every split, with a ``ClassLabel`` of those names only."""
    if not spec:
        return dsd
    names = list(next(iter(dsd.values())).features[LABEL_COLUMN].names)
    kept = parse_class_selection(spec, names, option)
    out, _ = remap_labels(dsd, kept, option)
    for key, ds in out.items():
        if len(ds) == 0:
            raise TransferConfigError(f"{option}={spec!r}: the {key!r} split has no row of {kept}.")
    return out
