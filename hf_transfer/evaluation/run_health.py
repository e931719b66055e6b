"""A run's health: the verdicts on its losses and accuracy, and the marker a stopped run leaves in its folder.

Why: a run whose learning rate was far too high used to finish with exit 0, NaN weights, a logged loss
of 0 (the Trainer's ``logging_nan_inf_filter`` hides non-finite losses) and a pushed model. The guard
in the training loop (:mod:`hf_transfer.training.health_guard`) stops such a run; this module holds
what the training and hub layers share about it, so the hub never imports training:

* :data:`HEALTH_FILE` (``run_health.json``): written into the output folder when a run is stopped for
  its health, naming the step, the loss and the last good checkpoint; ``push`` refuses a folder that
  holds it (:func:`stop_marker_problem`), and a healthy finish of the same run removes it;
* :func:`divergence_warnings`: the softer signs (the loss ended far above where it began, the test
  accuracy is no better than always predicting the most common class), written to the log,
  ``results.json`` and the model card.

Pure Python (no torch): every layer above may use it.
"""

from __future__ import annotations

import json
import math
import os

from hf_transfer.runtime.cache import write_atomic

HEALTH_FILE = "run_health.json"
#: the training loss "ended far above where it began": its last steps' mean over its first steps' mean
DIVERGED_LOSS_RATIO = 2.0
#: steps averaged at each end of the run for that comparison (fewer when the run is short)
LOSS_WINDOW = 20


def fmt_loss(value: float) -> str:
    """A loss for a message: ``nan``, ``inf`` or 4 significant digits."""
    return repr(float(value)) if not math.isfinite(value) else f"{value:.4g}"


def write_stop_marker(output_dir: str | os.PathLike, record: dict) -> str:
    """Write :data:`HEALTH_FILE` (``record``: ``reason``, ``step``, ``loss``, ``message``, ...); returns its path.

    Non-finite floats are stored as strings (``"nan"``), so the file stays valid JSON."""
    clean = {k: (fmt_loss(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    path = os.path.join(os.fspath(output_dir), HEALTH_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, json.dumps({"stopped": True, **clean}, indent=2))
    return path


def read_stop_marker(folder: str | os.PathLike) -> dict | None:
    """The stop record of the run in ``folder`` (None: it was not stopped for its health)."""
    path = os.path.join(os.fspath(folder), HEALTH_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    record.setdefault("message", f"{HEALTH_FILE} is there but unreadable: the run was stopped for its health.")
    return record


def remove_stop_marker(folder: str | os.PathLike) -> None:
    """A healthy finish of the run (e.g. resumed from its last good checkpoint) lifts an earlier stop."""
    path = os.path.join(os.fspath(folder), HEALTH_FILE)
    if os.path.isfile(path):
        os.remove(path)


def stop_marker_problem(folder: str | os.PathLike) -> str | None:
    """Why the folder must not be published (None: no stop marker)."""
    record = read_stop_marker(folder)
    if record is None:
        return None
    return (
        f"{os.path.join(os.fspath(folder), HEALTH_FILE)}: the run was stopped: {record['message']} "
        "Train it again (e.g. with a lower learning rate) before pushing."
    )


def window_means(first: list[float], last: list[float], num_steps: int) -> tuple[float, float] | None:
    """The mean loss of the first steps and of the last steps; None when no loss was recorded.

    Each mean is over ``min(LOSS_WINDOW, num_steps // 5)`` steps (at least one)."""
    if not first or not last:
        return None
    window = max(1, min(LOSS_WINDOW, num_steps // 5, len(first), len(last)))
    return sum(first[:window]) / window, sum(last[-window:]) / window


def chance_accuracy(confusion_matrix: list[list[int]] | None, num_classes: int) -> float:
    """The accuracy of always predicting the most common test class (``1 / num_classes`` when unknown)."""
    support = [sum(row) for row in confusion_matrix or []]
    total = sum(support)
    return max(support) / total if total else 1.0 / max(1, num_classes)


def at_chance(accuracy: float, num_samples: int, chance: float) -> bool:
    """``accuracy`` is within two binomial standard errors of ``chance`` (or below it)."""
    if num_samples <= 0 or math.isnan(accuracy):
        return False
    return accuracy <= chance + 2.0 * math.sqrt(chance * (1.0 - chance) / num_samples)


def divergence_warnings(
    loss_start: float | None, loss_end: float | None, target_metrics: dict | None, num_classes: int
) -> list[str]:
    """The run's warning lines: the loss ended far above where it began, or the target accuracy is at chance.

    Empty when neither holds."""
    out = []
    # a loss that starts at or below 0 (a source-free method's negative affinity) has no "2x where it began"
    if (
        loss_start is not None
        and loss_end is not None
        and loss_start > 0
        and loss_end > DIVERGED_LOSS_RATIO * loss_start
    ):
        out.append(
            f"The training loss ended at {fmt_loss(loss_end)}, {loss_end / loss_start:.3g}x where it began "
            f"({fmt_loss(loss_start)}): the run diverged (try a lower learning rate)."
        )
    m = target_metrics or {}
    if m.get("accuracy") is not None and m.get("num_samples"):
        chance = chance_accuracy(m.get("confusion_matrix"), num_classes)
        if at_chance(float(m["accuracy"]), int(m["num_samples"]), chance):
            out.append(
                f"The target test accuracy {100 * m['accuracy']:.1f}% is at chance level ({100 * chance:.1f}%, "
                f"always predicting the most common of the {num_classes} classes, on {m['num_samples']} images): "
                "the model has not learned the task."
            )
    return out
