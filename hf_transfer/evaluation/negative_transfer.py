"""Is the adapted model likely worse than training on the source alone? Asked without a target label.

Negative transfer (the adapted model below its source-only baseline on the target) is what a user of domain
adaptation most needs to hear about, and in real use there are no target labels to see it with. Both runs score
their exported weights on the same unlabelled target training images with the unsupervised validators
(``target_unlabelled_scores`` in results.json, :mod:`hf_transfer.evaluation.validators`); an adapted model whose
validator score is below the baseline's is flagged as *likely* worse. It is a heuristic, and its agreement with the
labelled truth is measured in ``benchmarks/domain_adaptation.py`` (the "validator flags" column): a method that
trains the validator's own quantity (entropy minimisation, IM) can raise the score without raising accuracy.

When both runs have target TEST labels, the check also says what the labels say, so the card shows both.
"""

from __future__ import annotations

from typing import Any

#: the validator the check reads (the one ``--checkpoint_selection auto`` picks with)
CHECK_VALIDATOR = "im"


def negative_transfer(results: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """The validator's verdict on ``results`` against its source-only ``baseline``; None when it cannot be asked.

    It cannot be asked outside domain mode, of the baseline itself, without a baseline, or when either run lacks
    the validator's score (a run from before the scores were recorded)."""
    if baseline is None or results.get("mode") != "domain" or results is baseline:
        return None
    ours = (results.get("target_unlabelled_scores") or {}).get(CHECK_VALIDATOR)
    theirs = (baseline.get("target_unlabelled_scores") or {}).get(CHECK_VALIDATOR)
    if ours is None or theirs is None:
        return None
    out: dict[str, Any] = {
        "validator": CHECK_VALIDATOR,
        "adapted_score": float(ours),
        "baseline_score": float(theirs),
        "likely_worse": float(ours) < float(theirs),
    }
    accuracy = (results.get("metrics") or {}).get("target", {}).get("accuracy")
    base_accuracy = (baseline.get("metrics") or {}).get("target", {}).get("accuracy")
    if accuracy is not None and base_accuracy is not None:  # target test labels: what they say, beside the guess
        out["labelled"] = {"adapted": accuracy, "baseline": base_accuracy, "worse": accuracy < base_accuracy}
    return out


def recorded_or_new(results: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """The check against ``baseline`` when a card is given one, else the one the run recorded (its neighbour's)."""
    return negative_transfer(results, baseline) if baseline is not None else results.get("negative_transfer")


def warning_text(check: dict[str, Any] | None) -> str | None:
    """The card's warning line when the validator says the adapted model is likely worse; None otherwise."""
    if not check or not check["likely_worse"]:
        return None
    text = (
        f"**Possible negative transfer.** On the unlabelled target training images, the unsupervised validator "
        f"({check['validator'].upper()}) scores this model {check['adapted_score']:.3f}, below the source-only "
        f"baseline's {check['baseline_score']:.3f}: the adaptation has likely made it worse than training on the "
        "source alone. Check it on a few labelled target images before using it, or use the baseline."
    )
    labelled = check.get("labelled")
    if labelled:
        verdict = "confirm it" if labelled["worse"] else "do not confirm it"
        text += (
            f" The target test labels {verdict}: {100 * labelled['adapted']:.1f}% against the baseline's "
            f"{100 * labelled['baseline']:.1f}%."
        )
    return text
