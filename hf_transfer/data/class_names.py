"""The one rule for when two class names are the same class, used by every command.

Names are compared after :func:`class_key`: case-folded, ``_`` and ``-`` read as spaces, runs of white
space collapsed (``"Golden_Retriever"`` = ``"golden retriever"``). Training matches a source and a target
domain by it (:mod:`hf_transfer.data.align`), ``target_classes`` picks classes by it
(:mod:`hf_transfer.data.classes`) and ``hf-transfer evaluate`` matches a model's classes to a dataset's by
it (:mod:`hf_transfer.evaluation.label_match`). So one dataset may not hold two names with one key: they
would be two classes in one place and one class in another. Every loaded dataset is checked
(:func:`check_distinct_class_names`, called by :func:`hf_transfer.data.columns.standardize_columns`) and
refused with the colliding names.
"""

from __future__ import annotations

from collections.abc import Iterable

from hf_transfer.errors import TransferConfigError

_SHOWN = 5  # colliding groups named in one error


def class_key(name: object) -> str:
    """The identity of a class name: case-folded, ``_``/``-`` as spaces, white space collapsed."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").casefold().split())


def colliding_names(names: Iterable[object]) -> list[list[str]]:
    """Groups of two or more distinct names that share one :func:`class_key`, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(class_key(name), []).append(str(name))
    return [group for group in groups.values() if len(group) > 1]


def check_distinct_class_names(names: Iterable[object], where: str) -> None:
    """Refuse class names that are one class under :func:`class_key`, naming them (see the module doc)."""
    groups = colliding_names(names)
    if groups:
        shown = "; ".join(" = ".join(repr(n) for n in group) for group in groups[:_SHOWN])
        more = f" (and {len(groups) - _SHOWN} more)" if len(groups) > _SHOWN else ""
        raise TransferConfigError(
            f"{where}: {len(groups)} group(s) of class names are the same class under hf_transfer's name rule "
            f"(case, spaces, '_' and '-' ignored): {shown}{more}. Give each class one distinct name (merge or "
            "rename them, e.g. with Dataset.map on the label column) before training or evaluating."
        )
