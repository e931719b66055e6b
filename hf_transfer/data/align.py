"""Align the label spaces of a source and a target domain **by class name**, never by id.

Two datasets rarely agree on label ids: ``cat`` may be 3 in one and 0 in the other. Names are
compared by :func:`hf_transfer.data.class_names.class_key` (case, spaces, ``_``/``-`` vs space), the rule
every command uses. The aligned domains
carry one shared ``ClassLabel`` whose order is the source's.

Policies for classes not in both domains:
- ``shared``  (default): keep the classes in both; drop the others from both, with a report.
- ``partial``: the target's classes must be a subset of the source's (partial domain adaptation);
  every source class is kept, the target keeps its own.
- ``strict``:  both label sets must be equal.
Nothing shared is always an error.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel

from hf_transfer.data.class_names import check_distinct_class_names, class_key
from hf_transfer.data.columns import LABEL_COLUMN
from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)
POLICIES = ("shared", "partial", "strict")


@dataclass
class AlignmentReport:
    policy: str
    label_names: list[str]
    shared: list[str]
    source_only: list[str]
    target_only: list[str]
    dropped_rows: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        """The label-space setting in the usual domain-adaptation vocabulary."""
        if not self.source_only and not self.target_only:
            return "closed-set"
        if not self.target_only:
            return "partial"
        return "open-set" if not self.source_only else "mixed"

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values, with its setting, for results.json and the card."""
        return {**asdict(self), "setting": self.setting}

    def summary(self) -> str:
        """The report as the few log lines a user reads before training starts."""
        lines = [f"label alignment ({self.policy}, {self.setting}): {len(self.shared)} shared classes"]
        if self.source_only:
            lines.append(f"  source only: {self.source_only}")
        if self.target_only:
            lines.append(f"  target only: {self.target_only}")
        for domain, per_split in self.dropped_rows.items():
            if any(per_split.values()):
                lines.append(f"  dropped rows in {domain}: {per_split}")
        return "\n".join(lines)


@dataclass
class AlignedDomains:
    source: datasets.DatasetDict
    target: datasets.DatasetDict
    label_names: list[str]
    report: AlignmentReport

    @property
    def id2label(self) -> dict[int, str]:
        """The shared label space as a model config's ``id2label``."""
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        """The shared label space as a model config's ``label2id``."""
        return {name: i for i, name in enumerate(self.label_names)}


def _names(dsd: datasets.DatasetDict, where: str) -> list[str]:
    feat = next(iter(dsd.values())).features.get(LABEL_COLUMN)
    if not isinstance(feat, ClassLabel):
        raise TransferConfigError(f"{where} has no ClassLabel column {LABEL_COLUMN!r} to align.")
    check_distinct_class_names(feat.names, where)
    return list(feat.names)


def label_lookup(old: list[str], names: list[str]) -> np.ndarray:
    """Old class id -> its id in ``names``, matched by name (:func:`class_key`); -1 for a class not in ``names``.

    One entry more than ``old``: -1 at the end, so that an unlabelled row (id -1) maps to -1."""
    new_index = {class_key(n): i for i, n in enumerate(names)}
    return np.array([new_index.get(class_key(n), -1) for n in old] + [-1], dtype=np.int64)


def remap_labels(dsd: datasets.DatasetDict, names: list[str], where: str) -> tuple[datasets.DatasetDict, dict]:
    """Drop rows whose class is not in ``names`` and re-encode the rest to ``ClassLabel(names)``."""
    old = next(iter(dsd.values())).features[LABEL_COLUMN].names
    lookup = label_lookup(old, names)
    target_label = ClassLabel(names=list(names))
    out, dropped = {}, {}
    for split, ds in dsd.items():
        ids = np.asarray(ds[LABEL_COLUMN], dtype=np.int64)
        mapped = lookup[ids]  # -1 (unlabelled) maps to the trailing -1
        keep = np.flatnonzero((mapped >= 0) | (ids < 0))
        dropped[split] = int(len(ds) - len(keep))
        if dropped[split]:
            ds = ds.select(keep)
            mapped = mapped[keep]
        out[split] = ds.remove_columns(LABEL_COLUMN).add_column(LABEL_COLUMN, mapped.tolist(), feature=target_label)
    return datasets.DatasetDict(out), dropped


def align_domains(source: datasets.DatasetDict, target: datasets.DatasetDict, policy: str = "shared") -> AlignedDomains:
    """Match label spaces by name and re-encode both domains to one shared ``ClassLabel``."""
    if policy not in POLICIES:
        raise TransferConfigError(f"Unknown label policy {policy!r}; choose one of {POLICIES}.")
    src_names = _names(source, "source domain")
    tgt_names = _names(target, "target domain")
    tgt_norm = {class_key(n) for n in tgt_names}
    src_norm = {class_key(n) for n in src_names}
    shared = [n for n in src_names if class_key(n) in tgt_norm]
    source_only = [n for n in src_names if class_key(n) not in tgt_norm]
    target_only = [n for n in tgt_names if class_key(n) not in src_norm]
    if not shared:
        raise TransferConfigError(
            "Source and target share no class name. "
            f"Source classes: {src_names[:20]}{' ...' if len(src_names) > 20 else ''}; "
            f"target classes: {tgt_names[:20]}{' ...' if len(tgt_names) > 20 else ''}. "
            "Rename the classes of one domain (e.g. with Dataset.align_labels_with_mapping) so that they match."
        )
    if policy == "strict" and (source_only or target_only):
        raise TransferConfigError(
            f"label_policy='strict' but the label sets differ: source only {source_only}, "
            f"target only {target_only}. Use label_policy='shared' or 'partial'."
        )
    if policy == "partial" and target_only:
        raise TransferConfigError(
            f"label_policy='partial' needs the target classes to be a subset of the source's; "
            f"target only: {target_only}. Use label_policy='shared' to drop them."
        )
    names = src_names if policy == "partial" else shared
    report = AlignmentReport(policy, list(names), shared, source_only, target_only)
    new_source, report.dropped_rows["source"] = remap_labels(source, names, "source domain")
    new_target, report.dropped_rows["target"] = remap_labels(target, names, "target domain")
    if source_only or target_only:
        logger.warning(report.summary())
    return AlignedDomains(new_source, new_target, list(names), report)


def align_to_classifier(target: datasets.DatasetDict, names: list[str]) -> AlignedDomains:
    """The target re-encoded to a trained classifier's classes ``names`` (its ``id2label``, in head order), by name.

    For a source-free run: there is no source, the classifier's classes are the label space (its head keeps its
    order). Target rows of classes the classifier does not know are dropped (reported as target-only); classes
    only the classifier has stay in the label space (the head can still predict them). Nothing shared is an
    error naming both lists."""
    tgt_names = _names(target, "target domain")
    check_distinct_class_names(names, "the classifier's id2label")
    known = {class_key(n) for n in names}
    tgt_keys = {class_key(n) for n in tgt_names}
    shared = [n for n in names if class_key(n) in tgt_keys]
    if not shared:
        raise TransferConfigError(
            "The classifier (--backbone) and the target share no class name. "
            f"Classifier classes: {names[:20]}{' ...' if len(names) > 20 else ''}; "
            f"target classes: {tgt_names[:20]}{' ...' if len(tgt_names) > 20 else ''}. "
            "Start from a classifier trained on the target's classes, or rename the target's classes to match."
        )
    report = AlignmentReport(
        "classifier",
        list(names),
        shared,
        [n for n in names if class_key(n) not in tgt_keys],
        [n for n in tgt_names if class_key(n) not in known],
    )
    new_target, report.dropped_rows["target"] = remap_labels(target, list(names), "target domain")
    if report.source_only or report.target_only:
        logger.warning(report.summary())
    return AlignedDomains(datasets.DatasetDict(), new_target, list(names), report)
