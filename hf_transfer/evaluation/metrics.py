"""Classification metrics of a run: accuracy, macro-F1, per-class accuracy and the confusion matrix.

Plain scikit-learn on numpy arrays, without ``evaluate``: its Hub metrics (``evaluate.load("accuracy")``)
fail offline, and an in-code ``evaluate.Metric`` would only add an Arrow round trip and cache files
around these same sklearn calls (the Trainer already gathers predictions across processes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, f1_score

if TYPE_CHECKING:
    from transformers import EvalPrediction

UNLABELLED = -1


def classification_report(predictions: npt.ArrayLike, references: npt.ArrayLike, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class accuracy and the confusion matrix over the labelled rows only.

    A row labelled ``UNLABELLED`` is never scored (counted as an error it would lower accuracy, macro-F1 and the
    confusion matrix's totals)."""
    preds, refs = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
    scored = refs != UNLABELLED
    preds, refs = preds[scored], refs[scored]
    cm = confusion_matrix(refs, preds, labels=np.arange(int(num_classes)))
    support = cm.sum(axis=1)
    per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {
        "accuracy": float((preds == refs).mean()) if len(refs) else float("nan"),
        "macro_f1": float(f1_score(refs, preds, labels=np.unique(refs), average="macro", zero_division=0)),
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
        "confusion_matrix": cm.tolist(),
        "num_samples": int(len(refs)),
    }


def unscored_classes(per_class_accuracy: list[float | None], label_names: list[str]) -> list[str]:
    """The classes without a labelled test row: no number of the report says anything about them."""
    return [name for name, acc in zip(label_names, per_class_accuracy, strict=True) if acc is None]


def unscored_message(where: str, names: list[str], num_classes: int, shown: int = 20) -> str:
    """One sentence for the log and the card: how many classes cannot be scored, and which."""
    listed = ", ".join(repr(n) for n in names[:shown]) + (
        f" ... (+{len(names) - shown} more)" if len(names) > shown else ""
    )
    return (
        f"{len(names)} of {num_classes} classes have no {where} row and cannot be scored (accuracy, macro-F1 and "
        f"the confusion matrix say nothing about them): {listed}."
    )


def scalar_metrics_fn(num_classes: int) -> Callable[[EvalPrediction], dict[str, float]]:
    """``compute_metrics`` for the Trainer: scalars only (loggers choke on matrices).

    Every eval set also gets the unsupervised validators (entropy, IM, SND) of its predictions; an
    eval set whose labels are all ``UNLABELLED`` (-1) gets ONLY those, so checkpoint selection on
    unlabelled target images (``metric_for_best_model: target_unlabelled_im``) never sees a label.
    """
    from hf_transfer.evaluation.validators import VALIDATORS

    def compute(eval_pred: EvalPrediction) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        out = {name: float(fn(logits)) for name, fn in VALIDATORS.items()}
        if labels is not None and (np.asarray(labels) != UNLABELLED).any():
            report = classification_report(np.argmax(logits, axis=-1), labels, num_classes)
            out.update(accuracy=report["accuracy"], macro_f1=report["macro_f1"])
        return out

    return compute


def model_selection(
    log_history: list[dict],
    oracle_key: str = "eval_target_accuracy",
    unlabelled_prefix: str = "eval_target_unlabelled_",
) -> dict | None:
    """Which evaluation step each unsupervised validator would pick, beside the oracle's pick.

    Reads the Trainer's ``log_history``: the oracle uses target TEST labels (not available in real
    use); each validator uses only predictions on unlabelled target TRAIN images.
    """
    from hf_transfer.evaluation.validators import VALIDATORS

    by_step: dict[int, dict] = {}
    for entry in log_history:  # the Trainer logs each eval set of a step as its own entry
        if any(k.startswith("eval_") for k in entry):
            by_step.setdefault(entry["step"], {"step": entry["step"]}).update(entry)
    evals = [e for _, e in sorted(by_step.items()) if oracle_key in e]
    if not evals:
        return None
    best = max(evals, key=lambda e: e[oracle_key])
    out = {
        "oracle": {"step": best["step"], "target_accuracy": best[oracle_key]},
        "last": {"step": evals[-1]["step"], "target_accuracy": evals[-1][oracle_key]},
    }
    for name in VALIDATORS:
        key = unlabelled_prefix + name
        scored = [e for e in evals if key in e]
        if scored:
            pick = max(scored, key=lambda e: e[key])
            out[name] = {"step": pick["step"], "target_accuracy": pick[oracle_key], "score": pick[key]}
    return out
