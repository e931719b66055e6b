"""The scores of a backbone ranking: every score of one candidate (:func:`score_features`, the costly linear
probe among them when asked) and what a run started from a ``ranking.json`` records (:func:`ranking_summary`:
the card's "Why this backbone"). The ranking run itself is :mod:`hf_transfer.selection.rank`."""

from __future__ import annotations

import json
import os

import numpy as np
import numpy.typing as npt

from hf_transfer.errors import TransferConfigError

#: every score, in the table's order; "probe" only with --probe
SCORES = ("logme", "leep", "nce", "hscore", "sfda", "knn", "probe")


def probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int, folds: int = 5) -> float:
    """Mean accuracy of a logistic-regression probe on standardised features, stratified k-fold cross-validated.

    The costly reference the cheap scores stand in for."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = max(2, min(folds, int(np.bincount(labels).min())))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, labels, cv=cv).mean())


def score_features(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    source_probs: npt.ArrayLike | None,
    *,
    knn_k: int = 5,
    probe: bool = False,
    seed: int = 0,
) -> dict[str, float | None]:
    """Every score of one candidate; LEEP and NCE are None without ``source_probs``."""
    from hf_transfer.evaluation import transferability as t

    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    out: dict[str, float | None] = {
        "logme": t.logme(f, y),
        "leep": t.leep(f, y, source_probs) if source_probs is not None else None,
        "nce": t.nce(f, y, source_probs) if source_probs is not None else None,
        "hscore": t.hscore(f, y),
        "sfda": t.sfda(f, y),
        "knn": t.knn_accuracy(f, y, k=knn_k),
    }
    if probe:
        out["probe"] = probe_accuracy(f, y, seed)
    return out


def ranking_summary(path: str, backbone: str, target: str) -> dict:
    """What a run started from ``path`` (a ranking.json) records about the ranking.

    Every candidate's scores, best first, and where this run's backbone stood. Refused (naming ``ranking``) where it
    cannot act: not a ranking,
    a ranking of another target, or one that did not rank ``backbone``."""
    try:
        with open(path) as f:
            ranking = json.load(f)
        candidates = ranking["candidates"]
        order = [c["backbone"] for c in candidates]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TransferConfigError(
            f"ranking={path!r}: not a ranking.json written by hf-transfer rank ({type(err).__name__}: {err})."
        ) from None
    if ranking.get("target_spec") not in (None, target):
        raise TransferConfigError(
            f"ranking={path!r} ranked backbones for target {ranking['target_spec']!r}, not {target!r}: "
            "rank for this target, or remove ranking."
        )
    if backbone not in order:
        raise TransferConfigError(
            f"ranking={path!r} did not rank backbone {backbone!r} (its candidates: {order}); remove ranking."
        )
    names = [s for s in SCORES if any(c["scores"].get(s) is not None for c in candidates)]
    return {
        "path": os.path.abspath(path),
        "target": ranking.get("target"),
        "rank_by": ranking.get("rank_by"),
        "num_images": ranking.get("num_images"),
        "position": order.index(backbone) + 1,
        "score_names": names,
        "candidates": [
            {
                "backbone": c["backbone"],
                "scores": {s: c["scores"].get(s) for s in names},
                "num_params": c.get("num_params"),
            }
            for c in candidates
        ],
    }
