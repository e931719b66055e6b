"""The models of ``hf-transfer app MODEL [MODEL_B]``: each one a run folder, a downloaded repo or a Hub id, loaded
by the page's own loader (:mod:`hf_transfer.app.page`), with its failures as one error naming what to fix; and the
second model a domain-adaptation run is compared with by default, its source-only baseline.

Where that baseline is: a run's ``results.json`` and card record the baseline's *numbers* (``push --baseline``,
the demo's cards), never its folder. What does locate it is the layout that made those numbers: a source-only run
beside the adapted run (the demo's ``seed0/source_only`` beside ``seed0/dann``) trained on the same source, target
and label names with the same seed. Nothing else is guessed: without such a folder the command says so and asks
for MODEL_B.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hf_transfer.app.page import LoadedModel, ModelLoadError, load_model
from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SAME_RUN_KEYS = ("source", "target", "label_names", "seed")  # what makes a source-only run this run's baseline


def load(model: str, name: str | None = None) -> LoadedModel:
    """Load one model for the page; a model that cannot be shown ends in a TransferConfigError naming why."""
    try:
        loaded = load_model(model, name=name)
    except ModelLoadError as err:
        raise TransferConfigError(str(err)) from err
    if name is None:
        loaded.name = display_name(model, loaded.folder)
    return loaded


def display_name(model: str, folder: Path) -> str:
    """A run folder by its name, mode/method and target accuracy (``dann: domain/dann, ...``); else as given."""
    results = _results(folder)
    if results is None or not Path(model).expanduser().is_dir():
        return model
    accuracy = ((results.get("metrics") or {}).get("target") or {}).get("accuracy")
    what = f"{results.get('mode')}/{results.get('method')}"
    return f"{folder.resolve().name}: {what}" + (
        f", target test accuracy {accuracy:.1%}" if accuracy is not None else ""
    )


def _results(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULTS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def _is_baseline(method: str | None) -> bool:
    """The method registry's rule, imported only for a domain run: it loads every method (peft, datasets, ...),
    which a page of any other model would wait for in vain."""
    from hf_transfer.methods.registry import is_baseline

    return is_baseline(method)


def needs_baseline(folder: Path) -> bool:
    """A domain-adaptation run other than the baseline itself: its page compares with the source-only run."""
    results = _results(folder) or {}
    return results.get("mode") == "domain" and not _is_baseline(results.get("method"))


def source_only_baseline(folder: Path) -> Path | None:
    """The source-only run beside ``folder`` with the same source, target, label names and seed, if exactly one."""
    results = _results(folder)
    if results is None:
        return None
    found = []
    for sibling in sorted(p for p in folder.resolve().parent.iterdir() if p.is_dir() and p != folder.resolve()):
        other = _results(sibling)
        if other and other.get("mode") == "domain" and _is_baseline(other.get("method")):
            if all(other.get(key) == results.get(key) for key in SAME_RUN_KEYS):
                found.append(sibling)
    return found[0] if len(found) == 1 else None


def page_models(model: str, model_b: str | None = None, single: bool = False) -> list[LoadedModel]:
    """The page's models: ``model``, then ``model_b``, else (a domain-adaptation run) its source-only baseline.

    ``single``: ``model`` alone, whatever it is. A domain-adaptation run whose baseline no folder locates is refused
    before anything loads, naming the two ways on."""
    if model_b is not None and single:
        raise TransferConfigError("--single shows MODEL alone: give MODEL_B or --single, not both.")
    first = load(model)
    if model_b is not None:
        return [first, load(model_b)]
    if single or not needs_baseline(first.folder):
        return [first]
    baseline = source_only_baseline(first.folder)
    if baseline is None:
        method = (_results(first.folder) or {}).get("method")
        raise TransferConfigError(
            f"{model} is a domain-adaptation run ({method}), shown beside its source-only baseline by default, but "
            f"no folder locates that baseline: {RESULTS_FILE} and the card record its numbers only, and no "
            "source-only run beside it has the same source, target, labels and seed. Give the baseline as MODEL_B "
            "(`hf-transfer app RUN BASELINE_RUN`), or --single to show this model alone."
        )
    logger.info("Comparing with the source-only baseline %s", baseline)
    second = load(str(baseline))
    second.name += " (the source-only baseline)"
    return [first, second]
