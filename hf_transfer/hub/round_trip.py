"""The round-trip check before a push: every form an exported folder holds (the root with
``pipeline("image-classification")``, the Endpoints ``handler.py``, the ``adapter/`` subfolder with PeftModel;
fresh objects, from disk only) is loaded and its predictions on ``examples/*`` are compared with the trained
model's (``reference_predictions.json``). On a mismatch, or a NaN/inf score on either side, :class:`RoundTripError`
says which form, image and label differed."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hf_transfer.models.examples import REFERENCE_PREDICTIONS

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-3

# a loaded form: (image path, k) -> its top-k predictions, [{"label": ..., "score": ...}, ...]
_Predict = Callable[[str, int], list[dict[str, Any]]]


class RoundTripError(RuntimeError):
    """The exported folder does not predict what the trained model predicted: nothing was pushed."""


def _pipeline_kwargs(folder: Path) -> dict:
    """For a LoRA adapter folder, what the model card's stock code passes to pipeline(): this run's image
    processor and, when the base's labels differ, the label kwargs (see hf_transfer.models.adapters)."""
    if not (folder / "adapter_config.json").is_file():
        return {}
    from hf_transfer.models.adapters import stock_pipeline_kwargs

    return stock_pipeline_kwargs(str(folder))


def _pipeline_form(model_dir: Path, device: str | int | None) -> _Predict:
    """The folder's root with ``pipeline("image-classification")`` (for an adapter, with its card's arguments)."""
    from transformers import pipeline

    clf = pipeline("image-classification", model=str(model_dir), device=device, **_pipeline_kwargs(model_dir))
    return lambda image, k: clf(image, top_k=k)


def _handler_form(model_dir: Path) -> _Predict:
    """The folder's ``handler.py`` as an Inference Endpoint runs it: ``EndpointHandler(dir)({"inputs": image})``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_transfer_checked_handler", model_dir / "handler.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"{model_dir / 'handler.py'} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(str(model_dir))
    return lambda image, k: handler({"inputs": image, "parameters": {"top_k": k}})


def _subfolder_adapter_form(model_dir: Path, subfolder: str) -> _Predict:
    """The adapter in ``subfolder`` as the card loads it: ``PeftModel.from_pretrained(base, repo, subfolder=...)``
    on the base built with the run's labels, preprocessed by the subfolder's own image processor."""
    import torch

    from hf_transfer.models.adapters import ADAPTER_INFO, load_adapter_model, stock_loading

    info = json.loads((model_dir / subfolder / ADAPTER_INFO).read_text())
    model = load_adapter_model(str(model_dir), subfolder=subfolder).eval()
    proc = stock_loading(info)["processor"]
    import transformers

    processor = getattr(transformers, proc["class"]).from_pretrained(str(model_dir / subfolder), **proc["kwargs"])
    labels = info["label_names"]

    def predict(image: str, k: int) -> list[dict[str, Any]]:
        from PIL import Image

        with torch.no_grad():
            x = processor(Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
            probs = model(pixel_values=x).logits.softmax(-1)[0]
        return [{"label": labels[i], "score": float(probs[i])} for i in probs.argsort(descending=True)[:k].tolist()]

    return predict


def published_forms(model_dir: str | os.PathLike) -> list[str]:
    """The forms a run folder holds, each checked by :func:`check_round_trip`.

    ``model`` or ``adapter`` (the root, with pipeline()), ``endpoint handler`` (``handler.py``), ``adapter/``
    (the PEFT subfolder).
    """
    from hf_transfer.models.adapters import ADAPTER_SUBDIR, HANDLER_FILE

    model_dir = Path(model_dir)
    forms = ["adapter" if (model_dir / "adapter_config.json").is_file() else "model"]
    if (model_dir / HANDLER_FILE).is_file():
        forms.append("endpoint handler")
    if (model_dir / ADAPTER_SUBDIR / "adapter_config.json").is_file():
        forms.append(f"{ADAPTER_SUBDIR}/")
    return forms


def _load_form(form: str, model_dir: Path, device: str | int | None) -> tuple[_Predict, str]:
    if form == "endpoint handler":
        return _handler_form(model_dir), f"handler.py EndpointHandler({str(model_dir)!r})"
    if form.endswith("/"):
        sub = form.rstrip("/")
        return _subfolder_adapter_form(
            model_dir, sub
        ), f"PeftModel.from_pretrained(base, {str(model_dir)!r}, subfolder={sub!r})"
    return _pipeline_form(model_dir, device), f"pipeline('image-classification', model={str(model_dir)!r})"


def check_round_trip(
    folder: str | os.PathLike,
    atol: float = DEFAULT_ATOL,
    device: str | int | None = "cpu",
    model_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Load every form ``folder`` (or ``model_dir``) holds and compare its predictions with the trained model's.

    The forms (:func:`published_forms`): the root with ``pipeline("image-classification")``, for an adapter with
    the arguments its model card gives; the Endpoints ``handler.py``; the ``adapter/`` subfolder with PeftModel
    as the card says. Each one's predictions on the example images are compared with
    ``reference_predictions.json``: top-1 label equal (unless the reference's top two are within ``atol``) and
    every class score within ``atol``. Returns the root form's predictions.
    """
    folder = Path(folder)
    model_dir = Path(model_dir) if model_dir is not None else folder
    ref_path = folder / REFERENCE_PREDICTIONS
    if not ref_path.is_file():
        raise RoundTripError(
            f"{ref_path} is missing: the run folder has no reference predictions to check "
            "the export against (was it written by hf_transfer.training.run.run_transfer?)."
        )
    reference = json.loads(ref_path.read_text())
    if not reference:
        raise RoundTripError(f"{ref_path} lists no example images.")
    for row in reference:
        if not (folder / row["file"]).is_file():
            raise RoundTripError(f"Example image {row['file']} listed in {REFERENCE_PREDICTIONS} is missing.")
    outputs = []
    for form in published_forms(model_dir):
        try:
            predict, how = _load_form(form, model_dir, device)
        except Exception as err:
            raise RoundTripError(
                f"{form}: could not load the exported folder the way its card says ({type(err).__name__}: {err}). "
                "Nothing was pushed."
            ) from err
        outputs.append(_compare(folder, reference, predict, how, atol))
    return outputs[0]


def _nonfinite(scores: dict[str, float]) -> list[str]:
    return [label for label, v in scores.items() if not math.isfinite(v)]


def _compare(folder: Path, reference: list[dict], predict: _Predict, how: str, atol: float) -> list[dict]:
    """Every comparison with NaN is false, so non-finite scores (the exported model's or the reference's)
    fail first, by name: a NaN model "passed" the tolerance checks below."""
    out = []
    for row in reference:
        preds = predict(str(folder / row["file"]), len(row["scores"]))
        got = {p["label"]: float(p["score"]) for p in preds}
        want = {k: float(v) for k, v in row["scores"].items()}
        for whose, scores in (("the trained model's reference", want), (f"the exported folder's ({how})", got)):
            if bad := _nonfinite(scores):
                raise RoundTripError(
                    f"Round-trip check failed on {row['file']}: {whose} scores are not finite "
                    f"({', '.join(f'{k!r}={scores[k]}' for k in bad[:3])}): the model outputs NaN/inf and "
                    "must not be published. Nothing was pushed."
                )
        if set(got) != set(want):
            raise RoundTripError(
                f"{row['file']}: {how} gives the labels {sorted(got)}, the trained model "
                f"{sorted(want)} (id2label/label_names lost or reordered?). Nothing was pushed."
            )
        ref_ranked = sorted(want, key=lambda k: want[k], reverse=True)
        ref_top, got_top = ref_ranked[0], max(got, key=lambda k: got[k])
        worst = max(want, key=lambda k: abs(got[k] - want[k]))
        diff = abs(got[worst] - want[worst])
        tie = len(ref_ranked) > 1 and want[ref_ranked[0]] - want[ref_ranked[1]] <= atol
        if (got_top != ref_top and not tie) or diff > atol:
            raise RoundTripError(
                f"Round-trip check failed on {row['file']} (true label {row.get('label')!r}): the trained model "
                f"predicted {ref_top!r} ({want[ref_top]:.4f}), the exported folder loaded with {how} predicts "
                f"{got_top!r} ({got[got_top]:.4f}); largest score difference {diff:.4g} on {worst!r} "
                f"(tolerance {atol}). Check preprocessor_config.json (size/mean/std) and config.json "
                "(labels, architecture). Nothing was pushed."
            )
        out.append({"file": row["file"], "label": got_top, "scores": got})
    return out
