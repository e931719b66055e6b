"""The card's YAML metadata: ``ModelCardData`` with ``eval_results`` (-> ``model-index``), built through
huggingface_hub and never by string-building YAML, and the offline checks that it round-trips."""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any

import yaml

from hf_transfer.hub.card_inputs import HUB, dataset_info, folder_library, reference_rows
from hf_transfer.hub.card_provenance import hub_origin

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCardData

logger = logging.getLogger(__name__)

BASELINE_CONFIG = "source-only-baseline"


def eval_results(results: dict, baseline: dict | None = None) -> list[EvalResult]:
    """``EvalResult``s per domain and split (test) for this model and, when known, the source-only baseline."""
    from huggingface_hub import EvalResult

    out = []
    for label, res, config in (("", results, None), (" (source-only baseline)", baseline, BASELINE_CONFIG)):
        if not res:
            continue
        for domain in ("target", "source"):
            m = (res.get("metrics") or {}).get(domain)
            spec = dataset_info(results.get(domain))
            if not m or spec is None:
                continue
            common = dict(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=spec["id"] or spec["display"],
                dataset_name=f"{spec['display']} ({domain})",
                dataset_split="test",
                dataset_config=spec["config"],
                dataset_revision=spec["revision"],
            )
            out.append(
                EvalResult(
                    metric_type="accuracy",
                    metric_value=round(float(m["accuracy"]), 4),
                    metric_name=f"Accuracy{label}",
                    metric_config=config,
                    **common,
                )
            )
            if m.get("macro_f1") is not None:
                out.append(
                    EvalResult(
                        metric_type="f1",
                        metric_value=round(float(m["macro_f1"]), 4),
                        metric_name=f"Macro F1{label}",
                        metric_config=config or "macro",
                        metric_args={"average": "macro"},
                        **common,
                    )
                )
    return out


def card_data(
    results: dict,
    repo_id: str | None,
    *,
    mode_tag: str | None,
    folder: str | os.PathLike[str] | None = None,
    baseline: dict | None = None,
    license: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    model_name: str | None = None,
) -> ModelCardData:
    """The ``ModelCardData`` of a run (metadata only); ``mode_tag`` is the mode's Hub tag.

    ``repo_id`` None: a local card (no widget: its images would be links into a repo that does not exist yet)."""
    from huggingface_hub import ModelCardData

    lib: dict[str, Any] = folder_library(folder) if folder else {"library": "transformers", "timm": False}
    method = results.get("method")
    tags = [
        "hf-transfer",
        "transfer-learning",
        "image-classification",
        f"transfer-mode-{results.get('mode')}",
        mode_tag,
    ]
    if method:
        tags.append(str(method).replace("_", "-"))
    if lib["timm"]:
        tags.append("timm")
    if lib["library"] == "peft" or results.get("adapter"):  # an adapter, or a LoRA run's merged model
        tags.append("lora")
    hub_datasets = [
        d["id"] for d in (dataset_info(results.get("source")), dataset_info(results.get("target"))) if d and d["id"]
    ]
    base = declared_base_model(results)
    extra: dict[str, Any] = {}
    if base:
        extra["base_model_relation"] = "adapter" if lib["library"] == "peft" else "finetune"
    widget = []
    if folder and repo_id:
        rev = revision or "main"
        endpoint = (endpoint or HUB).rstrip("/")
        for row in reference_rows(folder):
            widget.append({"src": f"{endpoint}/{repo_id}/resolve/{rev}/{row['file']}", "example_title": row["label"]})
    if widget:
        extra["widget"] = widget
    return ModelCardData(
        library_name=lib["library"],
        pipeline_tag="image-classification",
        base_model=base or None,
        datasets=list(dict.fromkeys(hub_datasets)) or None,
        license=license,
        tags=list(dict.fromkeys(t for t in tags if t)),
        metrics=["accuracy", "f1"],
        model_name=model_name or (repo_id.split("/")[-1] if repo_id else None),
        eval_results=eval_results(results, baseline) or None,
        **extra,
    )


def declared_base_model(results: dict) -> str | None:
    """The ``base_model`` a card declares: the Hub id the weights came from, directly or through local runs.

    The chain of local runs is :func:`~hf_transfer.hub.card_provenance.hub_origin`'s; never a local folder or a
    timm architecture name, which are not Hub ids (None then)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    base = hub_origin(results)
    if not base or os.path.isabs(base) or os.path.isdir(base):
        return None
    try:
        validate_repo_id(base)
    except HFValidationError:
        logger.warning("Not declaring base_model %r in the card: it is not a Hub repo id.", base)
        return None
    return base


def base_model_license(base_model: str | None, token: str | bool | None = None) -> str | None:
    """The ``license`` of the base model's card on the Hub (None when unknown or unreachable)."""
    if not base_model:
        return None
    try:
        from huggingface_hub import ModelCard

        # load passes the token on to hf_hub_download, which takes a bool too (False: no token); only the
        # annotation of load says str
        data = ModelCard.load(base_model, token=token).data  # type: ignore[arg-type]
        value = data.get("license")
        return value if isinstance(value, str) else None
    except Exception as err:  # no card, offline, gated...: the license is then simply not stated
        logger.info("No license found for base model %s (%s).", base_model, type(err).__name__)
        return None


def validate_card(text: str, expected: list[EvalResult] | None = None) -> list[EvalResult]:
    """Offline checks: the metadata parses and ``model-index`` round-trips; returns the eval results.

    Raises ``ValueError`` naming the problem.
    """
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import (
        eval_results_to_model_index,
        model_index_to_eval_results,
    )

    card = ModelCard(text)  # raises on invalid YAML
    front = re.match(r"\A---\n(.*?)\n---\n", text, re.DOTALL)
    if front is None:
        raise ValueError("model card metadata: the card does not start with a YAML block between '---' lines")
    raw = yaml.safe_load(front.group(1))
    for key in ("library_name", "pipeline_tag"):
        if not isinstance(raw.get(key), str):
            raise ValueError(f"model card metadata: {key!r} must be a string, got {raw.get(key)!r}")
    if "model-index" not in raw:
        return []
    name, results = model_index_to_eval_results(raw["model-index"])
    if eval_results_to_model_index(name, results) != raw["model-index"]:
        raise ValueError("model card metadata: model-index does not round-trip through EvalResult")
    if not isinstance(card.data, ModelCardData) or card.data.eval_results != results:
        raise ValueError("model card metadata: ModelCardData parses model-index differently")
    if expected is not None and results != expected:
        raise ValueError("model card metadata: model-index differs from the results it was rendered from")
    return results
