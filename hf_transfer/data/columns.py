"""Find the image and label columns of a dataset and bring them to one schema.

After :func:`standardize_columns` every domain has exactly ``image`` (``datasets.Image``, decoded in the
file's own mode: every input path converts it to RGB with :func:`hf_transfer.data.images.to_rgb`, which
keeps the real value range of 16-bit and float images) and, when labelled, ``label``
(``datasets.ClassLabel``). Errors name the columns so that the user can pass
``image_column=`` / ``label_column=``. Class names that are one class under the one class-name rule
(:mod:`hf_transfer.data.class_names`, e.g. ``Cat`` and ``cat``) are refused here, for every command.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
from datasets import ClassLabel, Image, Value

from hf_transfer.data.class_names import check_distinct_class_names
from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
_IMAGE_NAMES = ("image", "img", "images", "picture", "photo", "pixel_values")
_LABEL_NAMES = ("label", "labels", "target", "class", "category", "fine_label", "coarse_label", "y")


def _features_of(ds: datasets.DatasetDict | datasets.Dataset) -> datasets.Features:
    if isinstance(ds, datasets.DatasetDict):
        return next(iter(ds.values())).features
    return ds.features


def find_image_column(features: datasets.Features, where: str, requested: str | None = None) -> str:
    """The image column: ``requested``, else the one ``Image`` feature, else the one conventionally named column."""
    if requested is not None:
        if requested not in features:
            raise TransferConfigError(f"{where}: image column {requested!r} not found; columns are {sorted(features)}.")
        return requested
    typed = [name for name, feat in features.items() if isinstance(feat, Image)]
    if len(typed) == 1:
        return typed[0]
    if len(typed) > 1:
        raise TransferConfigError(f"{where}: several image columns {typed}; choose one with image_column=...")
    named = [name for name in features if name.lower() in _IMAGE_NAMES]
    if len(named) == 1:
        return named[0]
    raise TransferConfigError(
        f"{where}: no image column found (no datasets.Image feature and none of {list(_IMAGE_NAMES)}); "
        f"columns are {sorted(features)}. Name it with image_column=..."
    )


def _is_class_value(feat: object) -> bool:
    """One class per row, as labels: a ClassLabel, or ints / strings / bools that become one."""
    if isinstance(feat, ClassLabel):
        return True
    return isinstance(feat, Value) and (
        feat.dtype.startswith(("int", "uint")) or feat.dtype in ("string", "large_string", "bool")
    )


def check_label_feature(feat: object, column: str, where: str) -> None:
    """Refuse a label column that does not hold one class per image, naming it and what it holds.

    A list column (multi-label tags) reached Arrow's ``unique`` and failed there; a float column became one
    "class" per distinct value."""
    if _is_class_value(feat):
        return
    if isinstance(feat, (datasets.List, datasets.Sequence, datasets.LargeList, list)):
        what = "a list per image (multi-label)"
        fix = "hf_transfer trains single-label classifiers: give a column with one class per image"
    elif isinstance(feat, Value) and feat.dtype.startswith(("float", "double", "decimal")):
        what = f"{feat.dtype} numbers (a regression target?)"
        fix = "give a column of class ids or class names"
    else:
        what = f"{feat!r}"
        fix = "give a column of class ids or class names (ClassLabel, int or string)"
    raise TransferConfigError(f"{where}: label column {column!r} holds {what}, not one class per image; {fix}.")


def find_label_column(
    features: datasets.Features, where: str, requested: str | None = None, required: bool = True
) -> str | None:
    """The label column: ``requested``, else the one ``ClassLabel``, else the one conventionally named column.

    None when there is none and ``required`` is false (unlabelled target images)."""
    if requested is not None:
        if requested not in features:
            raise TransferConfigError(f"{where}: label column {requested!r} not found; columns are {sorted(features)}.")
        check_label_feature(features[requested], requested, where)
        return requested
    typed = [name for name, feat in features.items() if isinstance(feat, ClassLabel)]
    if len(typed) == 1:
        return typed[0]
    if len(typed) > 1:
        raise TransferConfigError(f"{where}: several ClassLabel columns {typed}; choose one with label_column=...")
    named = [
        name
        for name, feat in features.items()
        if name.lower() in _LABEL_NAMES
        and isinstance(feat, Value)
        and (feat.dtype.startswith("int") or feat.dtype in ("string", "large_string"))
    ]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise TransferConfigError(f"{where}: several candidate label columns {named}; choose one with label_column=...")
    if required:
        raise TransferConfigError(
            f"{where}: no label column found (no ClassLabel feature and no int/string column named one of "
            f"{list(_LABEL_NAMES)}); columns are {sorted(features)}. Name it with label_column=..."
        )
    return None


def _id_name_pairs(dsd: datasets.DatasetDict, ids: str, names: str) -> set[tuple[Any, Any]]:
    """The distinct (id, name) pairs of two columns over every split (Arrow's group-by; no image is read)."""
    pairs: set[tuple[Any, Any]] = set()
    for split in dsd.values():
        part = split.select_columns([ids, names])
        if part._indices is None:  # the table is the rows: group it in Arrow
            table = part.data.table.group_by([ids, names]).aggregate([])
            pairs.update(zip(table.column(ids).to_pylist(), table.column(names).to_pylist(), strict=True))
        else:
            pairs.update(zip(part[ids], part[names], strict=True))
    return {(i, n) for i, n in pairs if i is not None and n is not None}


def _one_to_one(pairs: set[tuple[Any, Any]]) -> bool:
    ids = {i for i, _ in pairs}
    names = {n for _, n in pairs}
    return len(ids) == len(names) == len(pairs)


def label_names_from_column(
    dsd: datasets.DatasetDict, label_column: str, where: str, requested: str | None = None
) -> dict[int, str] | None:
    """Class names for integer labels that carry none, from a companion string column that maps 1:1 to the ids.

    ``requested`` (``label_names_column``) names that column, and a mapping that is not 1:1 is refused, naming
    the ids or names that clash; without it, the one string column that maps 1:1 is used (None: none or several;
    the ids then stay the names). A layout such as Caltech-256's on the Hub: an int64 ``label`` and ``text`` with
    each row's class name."""
    features = _features_of(dsd)
    if requested is not None:
        if requested not in features:
            raise TransferConfigError(
                f"{where}: label names column {requested!r} not found; columns are {sorted(features)}."
            )
        pairs = _id_name_pairs(dsd, label_column, requested)
        if not _one_to_one(pairs):
            by_id: dict[Any, set] = {}
            for i, n in pairs:
                by_id.setdefault(i, set()).add(n)
            clash = {i: sorted(map(str, v))[:3] for i, v in by_id.items() if len(v) > 1}
            detail = f"ids with several names: {dict(list(clash.items())[:3])}" if clash else "names shared by ids"
            raise TransferConfigError(
                f"{where}: label names column {requested!r} does not map 1:1 to label column {label_column!r} "
                f"({detail}); name a column that holds each class's one name."
            )
        return {int(i): str(n) for i, n in pairs}
    candidates = [
        name
        for name, feat in features.items()
        if name != label_column and isinstance(feat, Value) and feat.dtype in ("string", "large_string")
    ]
    found = {c: pairs for c in candidates if _one_to_one(pairs := _id_name_pairs(dsd, label_column, c)) and pairs}
    if len(found) != 1:
        return None
    ((column, pairs),) = found.items()
    logger.info("%s: class names from column %r (it maps 1:1 to the ids of %r).", where, column, label_column)
    return {int(i): str(n) for i, n in pairs}


def _to_class_label(
    dsd: datasets.DatasetDict, column: str, where: str, id_names: dict[int, str] | None = None
) -> datasets.DatasetDict:
    """Strings or ints -> ClassLabel with the SAME names in every split (sorted, as imagefolder does).

    ``id_names``: the names of integer ids (from a companion column), in the ids' order."""
    feat = _features_of(dsd)[column]
    if isinstance(feat, ClassLabel):
        return _nulls_to_unlabelled(dsd, column)
    values: set = set()
    for split in dsd.values():
        values.update(v for v in split.unique(column) if v is not None)
    if not values:
        raise TransferConfigError(f"{where}: label column {column!r} holds no values.")
    names = sorted(values) if feat.dtype.startswith("int") else sorted(values, key=str)
    label = ClassLabel(names=[id_names[v] if id_names else str(v) for v in names])
    index = {v: i for i, v in enumerate(names)}

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[int]]:
        return {column: [index[v] if v is not None else -1 for v in batch[column]]}

    out = {}
    for split_name, split in dsd.items():
        features = split.features.copy()
        features[column] = label
        out[split_name] = split.map(encode, batched=True, features=features, desc=f"Encoding labels ({split_name})")
    return datasets.DatasetDict(out)


def _nulls_to_unlabelled(dsd: datasets.DatasetDict, column: str) -> datasets.DatasetDict:
    """A ClassLabel column may hold None: make it -1, the one "no label" value the rest of the code knows."""
    out = {}
    for split_name, split in dsd.items():
        if split.data.column(column).null_count:
            split = split.map(
                lambda batch: {column: [-1 if v is None else v for v in batch[column]]},
                batched=True,
                features=split.features,
                desc=f"Marking missing labels ({split_name})",
            )
        out[split_name] = split
    return datasets.DatasetDict(out)


def _takes_names(feat: object) -> bool:
    """Integer class ids without names (a ClassLabel has its own; strings are names)."""
    return isinstance(feat, Value) and feat.dtype.startswith(("int", "uint"))


def standardize_columns(
    dsd: datasets.DatasetDict,
    where: str,
    image_column: str | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    label_names_column: str | None = None,
) -> datasets.DatasetDict:
    """Keep only ``image`` and ``label`` (ClassLabel), renamed from whatever the data uses.

    Integer labels without names take them from a companion string column (:func:`label_names_from_column`)."""
    features = _features_of(dsd)
    img = find_image_column(features, where, image_column)
    lab = find_label_column(features, where, label_column, required=require_labels)
    if not isinstance(features[img], Image):
        raise TransferConfigError(
            f"{where}: column {img!r} is {features[img]!r}, not images. Cast it to datasets.Image() "
            "or name the image column with image_column=..."
        )
    id_names = None
    if lab is not None and _takes_names(features[lab]):
        id_names = label_names_from_column(dsd, lab, where, label_names_column)
    elif label_names_column is not None:
        raise TransferConfigError(
            f"{where}: label_names_column={label_names_column!r} names integer class ids, but the label column "
            f"{lab!r} is {features[lab] if lab else 'missing'}; remove it."
        )
    keep = [c for c in (img, lab) if c is not None]
    dsd = dsd.select_columns(keep)
    if lab is not None:
        dsd = _to_class_label(dsd, lab, where, id_names)
        check_distinct_class_names(_features_of(dsd)[lab].names, f"{where}, label column {lab!r}")
    renames = {old: new for old, new in ((img, IMAGE_COLUMN), (lab, LABEL_COLUMN)) if old and old != new}
    if renames:
        dsd = dsd.rename_columns(renames)
    return dsd.cast_column(IMAGE_COLUMN, Image())  # decoded in the file's own mode: see data/images.py
