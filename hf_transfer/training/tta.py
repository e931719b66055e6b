"""Test-time adaptation (``hf-transfer tta``): one online pass over the target's test split, batch by batch.

The classifier (a Hub id or a run folder, as ``hf-transfer evaluate`` reads it) is scored on the target test split
first (:func:`hf_transfer.evaluation.evaluate.evaluate`: the "before" row is exactly ``hf-transfer evaluate``'s
number), then adapted online by a registered test-time method (:mod:`hf_transfer.methods.tta`): each batch is
predicted, then the method updates the normalisation layers' affine parameters on it (the "online" accuracy is
that of these predictions). The stream is the test rows the classifier knows, in a seeded random order (a split
stored class by class would otherwise be a stream of one class at a time). Then the adapted model is written as a
Hub-ready folder (:func:`hf_transfer.models.export.export_model`) and scored again by ``evaluate`` ("after", in
eval mode, with the BatchNorm statistics the pass accumulated); ``hf-transfer tta`` then writes its card
(:mod:`hf_transfer.hub.card_tta`). With ``--handler``, an Endpoints ``handler.py`` that keeps adapting on the
requests it serves (:mod:`hf_transfer.models.tta_handler`).

Reset policy (``--reset``): ``never`` (continual), ``episodic`` (back to the starting model after every batch:
each batch is predicted as the starting model adapts on it; the written model is the starting one) or
``on_collapse`` (SAR's model recovery: back to the starting model when the 0.9 moving average of the method's
entropy signal falls below ``--collapse_entropy``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.registry import get_method
from hf_transfer.methods.tta.base import (
    TTA_MODE,
    build_tta_method,
    configure_for_tta,
    restore_batchnorm_momentum,
)

logger = logging.getLogger(__name__)

RESETS = ("never", "episodic", "on_collapse")
COLLAPSE_EMA = 0.9  # SAR's moving average of the entropy signal


@dataclass
class OnlinePass:
    """What one online pass gave: the predictions made while adapting, and the resets."""

    logits: np.ndarray
    labels: np.ndarray
    resets: int
    batches: int
    adapted_batches: int
    last_metrics: dict[str, float]


def tta_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The method, its options, learning rate and reset policy, checked before any work.

    The method's recipe fills what is not given."""
    method = get_method(args.method, TTA_MODE)
    options = dict(args.method_args or {})
    method.options(options)
    recipe = dict(method.recipe or {})
    reset = args.reset or recipe.get("reset", "never")
    if reset not in RESETS:
        raise TransferConfigError(f"--reset {reset!r}: choose one of {', '.join(RESETS)}.")
    if args.collapse_entropy is not None and reset != "on_collapse":
        raise TransferConfigError(
            f"--collapse_entropy {args.collapse_entropy} has no effect with --reset {reset}: it acts only with "
            "--reset on_collapse. Remove it."
        )
    lr = args.learning_rate if args.learning_rate is not None else float(recipe["learning_rate"])
    if not (math.isfinite(lr) and lr > 0):
        raise TransferConfigError(f"--learning_rate {lr}: must be a finite number > 0.")
    if args.batch_size < 2:
        raise TransferConfigError(
            f"--batch_size {args.batch_size}: test-time adaptation needs batches of at least 2 images (BatchNorm "
            "normalises with the batch's statistics; the entropy is a batch mean)."
        )
    return {
        "method": method.name,
        "title": method.title,
        "paper": method.paper,
        "method_args": options,
        "learning_rate": lr,
        "optimizer": "SGD, momentum 0.9",
        "reset": reset,
        "collapse_entropy": (args.collapse_entropy if args.collapse_entropy is not None else 0.2)
        if reset == "on_collapse"
        else None,
        "batch_size": args.batch_size,
        "recipe_defaults": sorted(
            k for k, given in (("learning_rate", args.learning_rate), ("reset", args.reset)) if given is None
        ),
    }


def _stream(num_rows: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The rows in a seeded random order, in batches (the last one may be smaller)."""
    order = np.random.default_rng(seed).permutation(num_rows)
    return [order[i : i + batch_size] for i in range(0, num_rows, batch_size)]


def online_pass(
    backbone: Any,
    rows: Any,
    settings: dict[str, Any],
    *,
    num_classes: int,
    seed: int,
    device: torch.device,
    input_path: str = "fast",
    decoded_cache_dir: str | None = None,
) -> OnlinePass:
    """Adapt ``backbone.model`` online over ``rows`` (the labelled test rows), batch by batch (module docstring)."""
    from hf_transfer.data.augment import BatchAugment
    from hf_transfer.data.decoded import DecodedImages, collate_decoded
    from hf_transfer.data.paired import ImageDomainDataset, collate_images
    from hf_transfer.data.transforms import eval_transform

    cfg = backbone.data_config
    if input_path == "fast":
        items: Any = DecodedImages(rows, cfg, "eval", cache_dir=decoded_cache_dir, progress=False)
        collate, to_input = collate_decoded, BatchAugment(cfg, "none").eval().to(device)
    else:
        items, collate, to_input = ImageDomainDataset(rows, eval_transform(cfg)), collate_images, None
    model = backbone.model.to(device)
    original = copy.deepcopy(model.state_dict())
    params = configure_for_tta(model)
    if not params:
        raise TransferConfigError(
            f"{backbone.model_id!r} has no normalisation layer with affine parameters (BatchNorm, LayerNorm, "
            "GroupNorm): test-time adaptation has nothing to adapt."
        )
    optimizer = torch.optim.SGD(params, lr=settings["learning_rate"], momentum=0.9)
    start = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    method = build_tta_method(settings["method"], params, optimizer, num_classes, **settings["method_args"])
    torch.manual_seed(seed)

    def reset() -> None:
        model.load_state_dict(start[0])
        optimizer.load_state_dict(start[1])
        method.reset()

    logits_out: list[torch.Tensor] = []
    labels_out: list[torch.Tensor] = []
    order: list[int] = []
    resets = adapted = 0
    ema: float | None = None
    batches = _stream(len(items), settings["batch_size"], seed)
    for index in batches:
        batch = collate([items[int(i)] for i in index])
        pixels = batch["pixel_values"].to(device)
        if to_input is not None:
            with torch.no_grad():
                pixels = to_input(pixels)
        if len(index) < 2:  # one image: no batch statistics to adapt with; predicted as the model stands
            model.eval()
            with torch.no_grad():
                logits = model(pixel_values=pixels).logits.float()
            _batchnorm_train(model)
        else:
            logits = method.adapt(_forward(model, pixels)).float()
            adapted += 1
        logits_out.append(logits.cpu())
        labels_out.append(batch["labels"])
        order += [int(i) for i in index]
        signal = method.last_metrics.get("collapse_signal", float("nan"))
        if settings["reset"] == "episodic":
            reset()
            resets += 1
        elif settings["reset"] == "on_collapse" and math.isfinite(signal):
            ema = signal if ema is None else COLLAPSE_EMA * ema + (1 - COLLAPSE_EMA) * signal
            if ema < settings["collapse_entropy"]:
                logger.info("Test-time adaptation: entropy collapsed (moving average %.3f), model reset", ema)
                reset()
                resets += 1
                ema = None
    if settings["reset"] == "episodic":  # every batch was adapted from the start: the model written is that
        model.load_state_dict(original)
    restore_batchnorm_momentum(model)
    model.requires_grad_(True)
    inverse = np.argsort(np.asarray(order))  # back to the rows' order, as evaluate scores them
    return OnlinePass(
        torch.cat(logits_out).numpy()[inverse],
        torch.cat(labels_out).numpy()[inverse],
        resets,
        len(batches),
        adapted,
        dict(method.last_metrics),
    )


def _forward(model: Any, pixels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The model's logits on this batch, as a method calls it (once or, for SAR, twice)."""
    return lambda: model(pixel_values=pixels).logits


def _batchnorm_train(model: torch.nn.Module) -> None:
    """BatchNorm back in train mode (batch statistics) after a batch predicted in eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.train()


def evaluate_namespace(args: argparse.Namespace, model: str, seed: int) -> argparse.Namespace:
    """The ``hf-transfer evaluate`` arguments that score ``model`` on the run's target rows (no outputs written)."""
    return argparse.Namespace(
        model=model,
        dataset=args.target,
        revision=args.revision if model == args.model else None,
        split=args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        seed=seed,
        max_samples=args.max_samples,
        batch_size=args.eval_batch_size,
        device=args.device,
        input_path=args.input_path,
        decoded_cache_dir=args.decoded_cache_dir,
        num_workers=0,
        output_dir=None,
        overwrite_output_dir=False,
        skip_bad_images=args.skip_bad_images,
    )


def run_tta(args: argparse.Namespace) -> dict[str, Any]:
    """``hf-transfer tta``: before, the online pass, the Hub-ready adapted model, after (module docstring)."""
    from hf_transfer.data.kshot import subset
    from hf_transfer.data.load import load_split
    from hf_transfer.data.spec import parse_dataset_spec
    from hf_transfer.evaluation.evaluate import DEFAULT_SEED, evaluate
    from hf_transfer.evaluation.label_match import known_rows, match_labels, score
    from hf_transfer.evaluation.model_source import load_model, resolve_model
    from hf_transfer.evaluation.predict import resolve_device
    from hf_transfer.models.examples import write_reference_predictions
    from hf_transfer.models.export import export_model
    from hf_transfer.runtime.folder_lock import check_output_folder, lock_folder

    started = time.perf_counter()
    settings = tta_settings(args)
    spec = parse_dataset_spec(args.target)
    check_output_folder(args.output_dir, "hf-transfer tta", TTA_OUTPUTS, overwrite=args.overwrite_output_dir)
    device = resolve_device(args.device)
    source = resolve_model(args.model, args.revision)
    seed = args.seed if args.seed is not None else (source.seed if source.seed is not None else DEFAULT_SEED)
    before = evaluate(evaluate_namespace(args, args.model, seed))
    ds = load_split(
        spec, args.split, args.image_column, args.label_column, seed=seed, skip_bad_images=args.skip_bad_images
    )
    ds = subset(ds, args.max_samples, seed)
    match = match_labels(args.model, source.label_names, spec.display_name, list(ds.features["label"].names))
    rows, _excluded, lookup = known_rows(ds, match)
    backbone = load_model(source)
    online = online_pass(
        backbone,
        rows,
        settings,
        num_classes=len(source.label_names),
        seed=seed,
        device=device,
        input_path=args.input_path,
        decoded_cache_dir=args.decoded_cache_dir,
    )
    online_metrics = score(online.logits, lookup[online.labels], match)
    results: dict[str, Any] = {
        "mode": TTA_MODE,
        "method": settings["method"],
        "tta": {
            **settings,
            "resets": online.resets,
            "batches": online.batches,
            "adapted_batches": online.adapted_batches,
            "stream": f"the {len(rows)} test rows the model knows, in a seeded random order (seed {seed})",
            "last_batch": online.last_metrics,
            "adapts_with_inputs_when_served": bool(args.handler),
        },
        "starting_model": args.model,
        "backbone": args.model,
        "backbone_revision": args.revision,
        "target": args.target,
        "target_name": spec.display_name,
        "split": args.split,
        "seed": seed,
        "label_names": backbone.label_names,
        "library": backbone.library,
        "data_config": backbone.data_config.to_dict(),
        "before_after": {
            "before": _row(before["metrics"]),
            "online": _row(online_metrics),
        },
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with lock_folder(args.output_dir, "hf-transfer tta"):
        export_model(backbone, args.output_dir, results=results)
        # the card's examples and the predictions a push's round-trip check compares the published model with
        write_reference_predictions(backbone, rows, args.output_dir)
    after = evaluate(evaluate_namespace(args, args.output_dir, seed))
    results["before_after"]["after"] = _row(after["metrics"])
    results["tta"]["worse_than_start"] = worse_than_start(results["before_after"])
    if results["tta"]["worse_than_start"]:
        logger.warning(
            "Test-time adaptation made the written model worse than the starting one on these rows (%s -> %s "
            "accuracy): use the starting model, or another --reset / --learning_rate.",
            results["before_after"]["before"]["accuracy"],
            results["before_after"]["after"]["accuracy"],
        )
    results["metrics"] = {"target": after["metrics"]}
    results["seconds"] = round(time.perf_counter() - started, 3)
    with lock_folder(args.output_dir, "hf-transfer tta"):
        _write_results(args.output_dir, results)
        if args.handler:
            from hf_transfer.models.tta_export import write_tta_handler

            write_tta_handler(args.output_dir, settings)
    return results


#: what ``hf-transfer tta`` writes into its output folder (besides the export's weights and configs)
TTA_OUTPUTS = ("results.json", "README.md", "config.json", "model.safetensors")


def worse_than_start(before_after: dict[str, dict[str, Any]]) -> bool:
    """The written (after) model scores below the starting (before) one on the same labelled rows."""
    before, after = before_after["before"].get("accuracy"), before_after.get("after", {}).get("accuracy")
    return before is not None and after is not None and after < before


def _row(metrics: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, macro-F1 and the row count of one scoring."""
    return {k: metrics.get(k) for k in ("accuracy", "macro_f1", "num_samples")}


def _write_results(output_dir: str, results: dict[str, Any]) -> None:
    import json

    from hf_transfer.models.export import RESULTS_FILE

    with open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True, default=str)
