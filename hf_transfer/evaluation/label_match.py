"""Match a classifier's class names to a dataset's, by name, and score it on the shared classes only.

The rule (``hf-transfer evaluate`` and the base model's "before" row of a training run, README "Checking a
model on your data"): names are normalised as training matches domains
(:func:`hf_transfer.data.class_names.class_key`, the one rule), never matched by id; only rows of shared classes are
scored, the prediction is the argmax over the shared classes, and a name the model repeats is one class (a
dataset whose names collide never gets here: loading refuses it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"^LABEL_\d+$")
_SHOWN = 8  # label names shown in one error line


def _first(names: list[str]) -> str:
    return f"{names[:_SHOWN]}{' ...' if len(names) > _SHOWN else ''}"


@dataclass
class LabelMatch:
    """The shared classes, in the model's order, and where each sits in the model and in the dataset."""

    names: list[str]  # the model's spelling
    model_index: list[int]  # the model's logit columns of the shared classes
    column_class: list[int]  # the shared class of each of those columns (two columns when the model repeats a name)
    model_only: list[str]
    dataset_only: list[str]


def match_labels(model_id: str, model_names: list[str], dataset: str, dataset_names: list[str]) -> LabelMatch:
    """Match by normalised name (see the module doc); one-line errors for placeholder names or no overlap."""
    from hf_transfer.data.class_names import class_key as norm
    from hf_transfer.data.class_names import colliding_names

    if model_names and all(_PLACEHOLDER.match(str(n)) for n in model_names):
        raise TransferConfigError(
            f"{model_id!r} names its classes only {_first(model_names)}: without real class names nothing can be "
            "matched to the dataset's classes; give a model whose config has real id2label names."
        )
    dataset_norm = {norm(n) for n in dataset_names}
    model_norm = {norm(n) for n in model_names}
    shared = [(i, n) for i, n in enumerate(model_names) if norm(n) in dataset_norm]
    if not shared:
        raise TransferConfigError(
            f"{model_id!r} and {dataset} share no class name: the model's classes are {_first(model_names)}, "
            f"the dataset's {_first(dataset_names)}."
        )
    merged = colliding_names(n for _, n in shared)
    if merged:  # said, not silent: their columns predict one class
        logger.warning(
            "%s names %d class(es) twice under the class-name rule (case, spaces, '_' and '-' ignored): %s; each "
            "group is scored as one class, predicted by any of its columns.",
            model_id,
            len(merged),
            "; ".join(" = ".join(repr(n) for n in group) for group in merged[:_SHOWN]),
        )
    names: list[str] = []
    position: dict[str, int] = {}  # a name the model repeats (ImageNet's two "crane"s) is one class
    for _, n in shared:
        if norm(n) not in position:
            position[norm(n)] = len(names)
            names.append(n)
    return LabelMatch(
        names=names,
        model_index=[i for i, _ in shared],
        column_class=[position[norm(n)] for _, n in shared],
        model_only=[n for n in model_names if norm(n) not in dataset_norm],
        dataset_only=[n for n in dataset_names if norm(n) not in model_norm],
    )


def known_rows(ds: Any, match: LabelMatch) -> tuple[Any, dict[str, int], np.ndarray]:
    """The dataset cut to the classes the model knows, the row counts of the others, and the label lookup.

    Returns ``(rows of the known classes, {class: rows} of the others, lookup)``; ``lookup`` maps a dataset label id
    to its shared-class index (-1: not shared; ``lookup[-1]`` keeps unlabelled rows -1)."""
    from hf_transfer.data.class_names import class_key as norm

    names = list(ds.features["label"].names)
    index = {norm(n): i for i, n in enumerate(match.names)}
    lookup = np.array([index.get(norm(n), -1) for n in names] + [-1], dtype=np.int64)
    ids = np.asarray(ds["label"], dtype=np.int64)
    known = lookup[ids] >= 0
    counts = np.bincount(ids[(ids >= 0) & ~known], minlength=len(names))
    excluded = {names[i]: int(c) for i, c in enumerate(counts) if c}
    return (ds if known.all() else ds.select(np.flatnonzero(known))), excluded, lookup


# --- scoring ---------------------------------------------------------------------------------------------


def score(logits: np.ndarray, labels: np.ndarray, match: LabelMatch) -> dict:
    """Training's metrics of the argmax over the shared classes, plus the argmax over all the model's classes.

    ``labels`` are shared-class indices (-1: not scored)."""
    from hf_transfer.evaluation.metrics import UNLABELLED, classification_report

    columns, column_class = np.asarray(match.model_index), np.asarray(match.column_class)
    report = classification_report(column_class[logits[:, columns].argmax(-1)], labels, len(match.names))
    scored = labels != UNLABELLED
    class_of = np.full(logits.shape[1], -2, dtype=np.int64)  # a model-only column is never a hit
    class_of[columns] = column_class
    hit = class_of[logits[scored].argmax(-1)] == labels[scored]
    report["unrestricted_accuracy"] = float(hit.mean()) if hit.size else float("nan")
    return report


def same_rows_metrics(confusion: list[list[int]], known: list[int]) -> dict:
    """Training's metrics of a model, from its confusion matrix, on only the rows of the ``known`` classes.

    Its predictions stay what they were: the adapted model scored on the rows the base was scored on."""
    from hf_transfer.evaluation.metrics import classification_report

    cm = np.asarray(confusion, dtype=np.int64)
    refs = np.concatenate([np.full(int(cm[r].sum()), r) for r in known]).astype(np.int64)
    preds = np.concatenate([np.repeat(np.arange(cm.shape[1]), cm[r]) for r in known]).astype(np.int64)
    report = classification_report(preds, refs, cm.shape[1])
    return {k: report[k] for k in ("accuracy", "macro_f1", "num_samples")}
