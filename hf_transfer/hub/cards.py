"""Model cards that tell the transfer: what was adapted, from what, to what, how, and how much it helped.

A card is rendered from a run's ``results.json`` (plus, optionally, the ``results.json`` of the
source-only baseline and of a target-supervised upper bound) through huggingface_hub's
``ModelCard.from_template``. This module names the modes and methods and assembles the pieces:

- :mod:`~hf_transfer.hub.card_inputs`: reading the run folder (results, exported library, arguments);
- :mod:`~hf_transfer.hub.card_provenance`: the chain of runs a model came from (its lineage);
- :mod:`~hf_transfer.hub.card_metadata`: ``ModelCardData`` / ``model-index`` and :func:`validate_card`;
- :mod:`~hf_transfer.hub.card_sections`, :mod:`~hf_transfer.hub.card_results` and
  :mod:`~hf_transfer.hub.card_domain`: the body text;
- :mod:`~hf_transfer.hub.card_usage`: the code that loads the pushed model;
- :mod:`~hf_transfer.hub.card_template`: the shipped Jinja template;
- :mod:`~hf_transfer.hub.card_merge`: regenerating a card without losing hand edits (:func:`merge_card`).

Entry points: :func:`render_card` (folder -> ``ModelCard``), :func:`write_card` (also writes the
PNG figures and ``README.md`` into the folder), :func:`merge_card`, :func:`validate_card`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_transfer.hub import card_results
from hf_transfer.hub import card_sections as sections
from hf_transfer.hub.card_domain import domain_option_lines
from hf_transfer.hub.card_inputs import (
    CONFIG_FILE,
    CONFUSION_PNG,
    CURVES_PNG,
    LR_FIND_PNG,
    README,
    REPO_ID_PLACEHOLDER,
    RESULTS_FILE,
    WISE_FT_PNG,
    dataset_info,
    folder_library,
    load_results,
    reference_rows,
)
from hf_transfer.hub.card_merge import merge_card
from hf_transfer.hub.card_metadata import card_data, validate_card
from hf_transfer.hub.card_template import template_text
from hf_transfer.hub.card_usage import usage_vars
from hf_transfer.methods.tta.base import TTA_MODE
from hf_transfer.models.examples import REFERENCE_PREDICTIONS

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from hf_transfer.methods.registry import Method

__all__ = [
    "CONFIG_FILE",
    "CONFUSION_PNG",
    "CURVES_PNG",
    "MODES",
    "local_repo_id",
    "merge_card",
    "render_card",
    "render_example",
    "template_text",
    "validate_card",
    "write_card",
    "write_figures",
]

#: the mode line of a source-free run (no source data at all)
SOURCE_FREE_TEXT = (
    "Source-free domain adaptation: a trained classifier is adapted with target images *without* labels only; "
    "no source data is seen. The target labels are used only to evaluate."
)

MODES = {
    "domain": (
        "Unsupervised domain adaptation",
        "Source images with labels and target images *without* labels are seen in training; the "
        "target labels are used only to evaluate.",
        "domain-adaptation",
    ),
    "feature": (
        "Feature transfer (linear probe)",
        "The backbone is frozen; its features are computed once (cached) and a linear classifier is "
        "trained on the target labels.",
        "linear-probe",
    ),
    "task": (
        "Task adaptation (fine-tuning)",
        "The backbone and a new classification head are trained on the target labels.",
        "fine-tuning",
    ),
}


def _registered(method: str | None) -> Method | None:
    """The method's registration (title, paper, one line), None for a name the registry does not know."""
    from hf_transfer.methods.registry import all_methods

    return all_methods().get(method) if method is not None else None


def _method_title(method: str | None) -> str | None:
    m = _registered(method)
    return m.title if m else method


def _method_vars(results: dict[str, Any]) -> dict[str, Any]:
    """Template variables of the "how it was adapted" section: the mode and method named from
    :data:`MODES` / the method registry, and the options the method ran with."""
    mode, method = results.get("mode"), results.get("method")
    registered = _registered(method)
    mode_entry = MODES.get(mode) if isinstance(mode, str) else None
    return dict(
        mode=mode,
        mode_title=mode_entry[0] if mode_entry else mode,
        mode_text=(SOURCE_FREE_TEXT if results.get("source_free") else (mode_entry[1] if mode_entry else "")),
        method=method,
        method_title=_method_title(method),
        method_paper=(results.get("paper") if mode == "domain" else None) or (registered.paper if registered else ""),
        method_text=registered.description if registered else "",
        method_args=results.get("method_args") or {},
        trade_off=results.get("trade_off") if mode == "domain" else None,
        adabn=results.get("adabn"),
        domain_options=domain_option_lines(results),
        frozen_groups=results.get("frozen_groups") or [],
    )


def render_card(
    folder: str | os.PathLike[str],
    repo_id: str | None,
    *,
    results: dict[str, Any] | None = None,
    baseline_results: str | os.PathLike[str] | dict[str, Any] | None = None,
    upper_bound_results: str | os.PathLike[str] | dict[str, Any] | None = None,
    license: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    template_path: str | os.PathLike[str] | None = None,
    figures: bool = True,
    model_name: str | None = None,
    space_id: str | None = None,
) -> ModelCard:
    """Render the card of the run in ``folder`` as it would be pushed to ``repo_id`` (nothing written).

    ``repo_id`` None: a local card, written before any push; it links to no Hub repo (none exists yet) and
    shows ``<REPO_ID>`` where the repo goes; a push re-renders it for the real repo. ``model_name``: the
    title (default: the repo's name, else the folder's). ``figures``: reference
    ``confusion_matrix.png``/``training_curves.png`` (see :func:`write_figures`). ``space_id``: the demo Space
    pushed beside the repo (``push --space``), linked from the summary.
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    results = load_results(results if results is not None else folder)
    baseline = load_results(baseline_results)
    upper = load_results(upper_bound_results)
    library = folder_library(folder)
    mode = results.get("mode")
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else local_repo_id(folder))
    data = card_data(
        results,
        repo_id,
        mode_tag=MODES[mode][2] if mode in MODES else mode,
        folder=folder,
        baseline=baseline,
        license=license,
        revision=revision,
        endpoint=endpoint,
        model_name=model_name,
    )
    backbone = sections.backbone_text(results, library["timm"])
    title = str(_method_title(results.get("method")))
    return ModelCard.from_template(
        data,
        template_str=template_text(template_path),
        repo_id=repo_id or REPO_ID_PLACEHOLDER,
        model_name=model_name,
        summary=sections.summary(results, baseline, upper, backbone, title)
        + negative_transfer_line(results, baseline)
        + space_line(space_id, endpoint),
        **_method_vars(results),
        lineage=sections.lineage(results),
        **sections.why_backbone_vars(results),
        **sections.data_vars(results, backbone),
        hyperparameters=sections.hyperparameters(results),
        **card_results.results_vars(results, baseline, upper, title, figures),
        **usage_vars(results, library, reference_rows(folder), revision, local=repo_id is None),
        limitations=card_results.limitations(results, baseline),
        **sections.reproduce_vars(results, repo_id, revision),
        versions=sorted((results.get("versions") or {}).items()),
    )


def negative_transfer_line(results: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """The summary's warning when the unsupervised validator says the model is likely worse than its baseline."""
    from hf_transfer.evaluation.negative_transfer import recorded_or_new, warning_text

    text = warning_text(recorded_or_new(results, baseline))
    return f"\n\n> {text}" if text else ""


def space_line(space_id: str | None, endpoint: str | None = None) -> str:
    """The summary's link to the demo Space ``space_id`` on the Hub at ``endpoint`` (empty without a Space)."""
    if not space_id:
        return ""
    from huggingface_hub import constants

    url = f"{(endpoint or constants.ENDPOINT).rstrip('/')}/spaces/{space_id}"
    return (
        f"\n\nTry it in your browser: [the demo Space]({url}) (drop or paste an image, see the top classes with their "
        "probabilities)."
    )


def write_figures(folder: str | os.PathLike[str], results: dict[str, Any] | None = None) -> list[str]:
    """Write ``confusion_matrix.png`` (target test) and ``training_curves.png`` into ``folder``."""
    from hf_transfer.evaluation.plots import confusion_matrix_png, lr_find_png, training_curves_png, wise_ft_png

    folder = Path(folder)
    results = load_results(results if results is not None else folder)
    written = []
    target = (results.get("metrics") or {}).get("target") or {}
    if target.get("confusion_matrix"):
        target_info = dataset_info(results.get("target"))
        dataset = target_info["display"] if target_info else results.get("target")
        title = f"Target test ({dataset}), {results.get('mode')}/{results.get('method')}"
        written.append(
            confusion_matrix_png(
                target["confusion_matrix"], results.get("label_names") or [], str(folder / CONFUSION_PNG), title=title
            )
        )
    if results.get("log_history") and training_curves_png(results["log_history"], str(folder / CURVES_PNG)):
        written.append(str(folder / CURVES_PNG))
    if results.get("lr_find") and lr_find_png(results["lr_find"], str(folder / LR_FIND_PNG)):
        written.append(str(folder / LR_FIND_PNG))
    if results.get("wise_ft") and wise_ft_png(results["wise_ft"], str(folder / WISE_FT_PNG)):
        written.append(str(folder / WISE_FT_PNG))
    return written


def local_repo_id(folder: str | os.PathLike[str]) -> str:
    """The name a local card (no repo yet) is titled with: the folder's name."""
    return Path(folder).resolve().name


def write_card(
    folder: str | os.PathLike[str], repo_id: str | None, *, existing: str | None = None, **kwargs: Any
) -> str:
    """Write the figures, ``train_config.yaml`` and ``README.md`` of the run into ``folder``; returns the card text.

    The card is merged into ``existing``, else into the folder's README.md when there is one. ``repo_id`` None: a
    local card (see :func:`render_card`); ``kwargs`` are :func:`render_card`'s options."""
    folder = Path(folder)
    results = load_results(kwargs.pop("results", None) or folder)
    if results.get("mode") == TTA_MODE:  # a folder of `hf-transfer tta`: its own card (no training to describe)
        from hf_transfer.hub.card_tta import render_tta_card

        text = render_tta_card(results, repo_id or local_repo_id(folder))
        (folder / README).write_text(text)
        return text
    write_figures(folder, results)
    sections.write_config(folder, results)
    card = render_card(folder, repo_id, results=results, **kwargs)
    if existing is None and (folder / README).is_file():
        existing = (folder / README).read_text()
    text = str(merge_card(existing, card))
    validate_card(text)
    (folder / README).write_text(text)
    return text


def render_example(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] = "model_cards/examples",
    model_name: str = "digits-printed-to-handwritten-dann",
    baseline_results: str | os.PathLike[str] | dict[str, Any] | None = None,
    upper_bound_results: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> str:
    """Render the committed example card from a run folder into ``out_dir``: ``README.md`` and its figures.

    E.g. the demo's ``seed0/dann``, with its ``seed0/source_only`` as baseline. It is a local card,
    as training writes one: no repo of that name exists on the Hub, so it links to none. Nothing is fetched
    from the network."""
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_FILE, REFERENCE_PREDICTIONS, "config.json"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out_dir / name)
    text = write_card(
        out_dir,
        None,
        existing="",
        baseline_results=baseline_results,
        upper_bound_results=upper_bound_results,
        model_name=model_name,
    )
    for name in (RESULTS_FILE, REFERENCE_PREDICTIONS, "config.json"):
        (out_dir / name).unlink(missing_ok=True)
    return text
