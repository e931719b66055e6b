"""Where a run's weights came from, as a chain: a run started from a local run folder carries that folder's
own origin, data and mode (read from its ``results.json``, recursively), so that a card can say "a
``test_resnet`` trained on printed digits, then fine-tuned on handwritten ones" instead of naming a folder.

Training records the chain in ``results["provenance"]`` (:func:`run_provenance`) when the base folder is
still there; the card reads it back (:func:`provenance_of`). The first link is the origin (random init, a
Hub model, or a local folder of unknown history); every later link is an earlier hf-transfer run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hf_transfer.errors import TransferConfigError
from hf_transfer.hub.card_inputs import RESULTS_FILE, dataset_info, is_local_backbone, load_results
from hf_transfer.methods.registry import default_method, is_baseline, modes

logger = logging.getLogger(__name__)

MAX_DEPTH = 32  # a chain longer than this is a loop of folders naming each other


def _origin(backbone: str | None, base_model: str | None, revision: str | None) -> dict:
    if base_model:
        return {"step": "origin", "init": "hub", "model": base_model, "revision": revision}
    if is_local_backbone(backbone, base_model):
        name = os.path.basename(str(backbone).rstrip("/" + os.sep))
        return {"step": "origin", "init": "local", "model": name, "path": backbone}
    return {"step": "origin", "init": "random", "model": backbone}


def _run_link(results: dict, path: str) -> dict:
    return {
        "step": "run",
        "folder": os.path.basename(str(path).rstrip("/" + os.sep)),
        "path": path,
        "mode": results.get("mode"),
        "method": results.get("method"),
        "source": results.get("source"),
        "target": results.get("target"),
        "target_accuracy": ((results.get("metrics") or {}).get("target") or {}).get("accuracy"),
    }


def _base_results(path: str) -> dict | None:
    """The ``results.json`` of a local base folder; None when there is none or it cannot be read (the
    chain then ends in a local folder of unknown history: a card is never worth a failed run)."""
    if not (Path(path) / RESULTS_FILE).is_file():
        return None
    try:
        return load_results(path)
    except (TransferConfigError, OSError) as err:
        logger.warning("The lineage of %s is not recorded: %s", path, err)
        return None


def run_provenance(
    backbone: str | None, base_model: str | None = None, revision: str | None = None, _seen: frozenset = frozenset()
) -> list[dict]:
    """The chain of links *before* a run that started from ``backbone``, the origin first.

    Then every earlier hf-transfer run whose folder (a ``results.json`` beside the weights) the next one started
    from."""
    if not is_local_backbone(backbone, base_model):
        return [_origin(backbone, base_model, revision)]
    key = os.path.realpath(str(backbone))
    base = _base_results(str(backbone)) if key not in _seen and len(_seen) < MAX_DEPTH else None
    if base is None:
        return [_origin(backbone, base_model, revision)]
    earlier = base.get("provenance")
    if not isinstance(earlier, list) or not earlier:  # a run recorded before the chain was
        earlier = run_provenance(
            base.get("backbone"), base.get("base_model"), base.get("backbone_revision"), _seen | {key}
        )
    return [*earlier, _run_link(base, str(backbone))]


def provenance_of(results: dict) -> list[dict]:
    """The chain recorded in ``results`` (or rebuilt from its backbone for a run recorded before it was)."""
    chain = results.get("provenance")
    if isinstance(chain, list) and chain:
        return chain
    return run_provenance(results.get("backbone"), results.get("base_model"), results.get("backbone_revision"))


def initialisation(results: dict) -> str:
    """Where the weights of the chain started: ``hub``, ``random`` or ``local`` (a folder of unknown history)."""
    return provenance_of(results)[0].get("init", "local")


def hub_origin(results: dict) -> str | None:
    """The Hub id the chain started from (the ``base_model`` a card may declare), None otherwise."""
    if results.get("base_model"):
        return results["base_model"]
    first = provenance_of(results)[0]
    return first.get("model") if first.get("init") == "hub" else None


def _data(spec: str | None) -> str:
    info = dataset_info(spec)
    return info["display"] if info else "?"


def link_text(link: dict) -> str:
    """One link of the chain in words: ``test_resnet (random init)``, ``source_only on builtin:digits-printed``."""
    if link.get("step") == "origin":
        init, model = link.get("init"), link.get("model")
        if init == "random":
            return f"{model} (random init)"
        if init == "hub":
            return f"{model}" + (f"@{link['revision']}" if link.get("revision") else "") + " (Hub)"
        return f"local folder {model} (no results.json: earlier history unknown)"
    mode, method = link.get("mode"), link.get("method")
    if mode == "domain" and not link.get("source"):  # a source-free run: the target's images alone
        return f"{method} (source-free) on unlabelled {_data(link.get('target'))}"
    if mode == "domain":
        what = f"{method} on {_data(link.get('source'))}"
        return what if is_baseline(method) else f"{what} + unlabelled {_data(link.get('target'))}"
    default = default_method(mode) if mode in modes() else None  # a mode's default method: named by the mode alone
    name = mode if method in (None, default) else f"{mode}/{method}"
    return f"{name} on {_data(link.get('target'))}"


def chain_text(results: dict) -> str:
    """The whole chain of runs up to this one, as one line of text.

    E.g. ``test_resnet (random init) -> source_only on builtin:digits-printed -> this run: task on
    builtin:digits-handwritten``."""
    this = link_text(_run_link(results, "this run"))
    return " -> ".join([*(link_text(link) for link in provenance_of(results)), f"this run: {this}"])


def base_run(results: dict) -> dict | None:
    """The run this one started from (the last link), None when it started from an origin."""
    last = provenance_of(results)[-1]
    return last if last.get("step") == "run" else None
