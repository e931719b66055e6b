"""Classification metrics through ``evaluate``, working offline.

``evaluate.load("accuracy")`` fetches a script from the Hub and fails offline, so the metric is an
in-code ``evaluate.Metric`` (its Arrow cache goes under ``$HF_TRANSFER_CACHE/metrics``, never the
user's cwd). One compute gives accuracy, macro-F1, per-class accuracy and the confusion matrix.
"""

from __future__ import annotations

import os
import tempfile

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, f1_score


def _cache_dir() -> str:
    root = os.environ.get("HF_TRANSFER_CACHE") or os.path.join(tempfile.gettempdir(), "hf_transfer")
    path = os.path.join(root, "metrics")
    os.makedirs(path, exist_ok=True)
    return path


class TransferClassificationMetric(evaluate.Metric):
    """Accuracy, macro-F1, per-class accuracy and confusion matrix of a classifier."""

    def __init__(self, num_classes: int, **kwargs):
        self.num_classes = int(num_classes)
        kwargs.setdefault("cache_dir", _cache_dir())
        super().__init__(**kwargs)

    def _info(self):
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="",
            inputs_description="predictions and references: class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        preds, refs = np.asarray(predictions), np.asarray(references)
        labels = np.arange(self.num_classes)
        cm = confusion_matrix(refs, preds, labels=labels)
        support = cm.sum(axis=1)
        per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
        present = np.unique(refs)
        return {
            "accuracy": float((preds == refs).mean()) if len(refs) else float("nan"),
            "macro_f1": float(f1_score(refs, preds, labels=present, average="macro", zero_division=0)),
            "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
            "confusion_matrix": cm.tolist(),
            "num_samples": int(len(refs)),
        }


def classification_report(predictions, references, num_classes: int) -> dict:
    metric = TransferClassificationMetric(num_classes=num_classes)
    return metric.compute(predictions=np.asarray(predictions).tolist(), references=np.asarray(references).tolist())


def scalar_metrics_fn(num_classes: int):
    """``compute_metrics`` for the Trainer: scalars only (loggers choke on matrices)."""

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        report = classification_report(np.argmax(logits, axis=-1), labels, num_classes)
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    return compute
