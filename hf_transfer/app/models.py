"""The models of ``hf-transfer app MODEL [MODEL_B]``: each one a run folder, a downloaded repo or a Hub id, loaded
by the page's own loader (:mod:`hf_transfer.app.page`), with its failures as one error naming what to fix; and the
second model a domain-adaptation run is compared with by default, its source-only baseline.

Where that baseline is: :func:`hf_transfer.hub.card_baseline.source_only_baseline` (a source-only run beside it with
the same source, target, labels and seed); nothing else is guessed, and without one the command asks for MODEL_B.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hf_transfer.app.page import LoadedModel, ModelLoadError, load_model
from hf_transfer.errors import TransferConfigError
from hf_transfer.hub.card_baseline import RESULTS_FILE, needs_baseline, read_results, source_only_baseline

logger = logging.getLogger(__name__)


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
    results = read_results(folder)
    if results is None or not Path(model).expanduser().is_dir():
        return model
    accuracy = ((results.get("metrics") or {}).get("target") or {}).get("accuracy")
    what = f"{results.get('mode')}/{results.get('method')}"
    return f"{folder.resolve().name}: {what}" + (
        f", target test accuracy {accuracy:.1%}" if accuracy is not None else ""
    )


def page_models(model: str, model_b: str | None = None, single: bool = False) -> list[LoadedModel]:
    """The page's models: ``model``, then ``model_b``, else (a domain-adaptation run) its source-only baseline.

    ``single``: ``model`` alone, whatever it is. A domain-adaptation run whose baseline no folder locates is refused
    before anything loads, naming the two ways on."""
    if model_b is not None and single:
        raise TransferConfigError("--single shows MODEL alone: give MODEL_B or --single, not both.")
    first = load(model)
    if model_b is not None:
        return [first, load(model_b)]
    if single or not needs_baseline(read_results(first.folder)):
        return [first]
    baseline = source_only_baseline(first.folder)
    if baseline is None:
        method = (read_results(first.folder) or {}).get("method")
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
