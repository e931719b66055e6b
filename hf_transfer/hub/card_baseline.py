"""The source-only run a domain-adaptation run is compared with, found beside it on disk.

A run's ``results.json`` records the baseline's *numbers* once a card was given them (``push --baseline``, the
demo's cards), never its folder. What does locate it is the layout that made those numbers: a source-only run beside
the adapted run (the demo's ``seed0/source_only`` beside ``seed0/dann``) trained on the same source, target and label
names with the same seed. Nothing else is guessed. Used by the run's own card (the negative-transfer check) and by
``hf-transfer app`` (the second model of the page).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
SAME_RUN_KEYS = ("source", "target", "label_names", "seed")  # what makes a source-only run this run's baseline


def read_results(folder: str | Path) -> dict[str, Any] | None:
    """The ``results.json`` of ``folder``, or None when it has none (or an unreadable one)."""
    path = Path(folder) / RESULTS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def is_baseline(method: str | None) -> bool:
    """Whether ``method`` is the baseline, by the method registry's rule.

    The registry is imported only when asked: it loads every method (peft, datasets, ...), which a page of any other
    model would wait for in vain."""
    from hf_transfer.methods.registry import is_baseline as registered

    return registered(method)


def needs_baseline(results: dict[str, Any] | None) -> bool:
    """A domain-adaptation run other than the baseline itself: compared with the source-only run."""
    results = results or {}
    return results.get("mode") == "domain" and not is_baseline(results.get("method"))


def source_only_baseline(folder: str | Path, results: dict[str, Any] | None = None) -> Path | None:
    """The source-only run beside ``folder`` with the same source, target, label names and seed, if exactly one.

    ``results``: ``folder``'s own, when they are not written yet (a run finishing)."""
    folder = Path(folder).resolve()
    results = results if results is not None else read_results(folder)
    if results is None or not folder.parent.is_dir():
        return None
    found = []
    for sibling in sorted(p for p in folder.parent.iterdir() if p.is_dir() and p != folder):
        other = read_results(sibling)
        if other and other.get("mode") == "domain" and is_baseline(other.get("method")):
            if all(other.get(key) == results.get(key) for key in SAME_RUN_KEYS):
                found.append(sibling)
    return found[0] if len(found) == 1 else None
