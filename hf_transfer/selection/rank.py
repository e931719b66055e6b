"""Choose the backbone before training, from one frozen feature pass per candidate.

For every candidate the target's train split goes once through the frozen backbone into the feature cache
(:class:`~hf_transfer.methods.feature.cache.FeatureCache`, under the same key a later ``--mode feature``
run with the same target, source, image size, sample cap and seed computes: that run then reads the
features instead of extracting them), and the transferability scores of
:mod:`hf_transfer.evaluation.transferability` are computed on them. LEEP and NCE need the candidate's own
source-class predictions: they are computed from its pretrained classifier applied to the cached features
(the classifier's input is what the cache stores), and are "n/a" for a candidate without one (a plain timm
architecture name is random init, and a checkpoint without classifier weights has none either).

Outputs in ``--output_dir``: ``ranking.json`` (every candidate with its scores, seconds, feature dim,
parameter count, cache hit or miss), ``ranking.png`` (one bar panel per score) and, with ``--top_k K``, one
training config per best candidate (``train_top<i>.yaml``, feature mode on the same data and cache) that
``hf-transfer train --config`` runs as is.

A candidate whose weight files on this disk are damaged is refused before any work, by name. One that fails
to load during the ranking (a damaged download, an unsupported head) is listed in ``not_ranked`` with its
error, the others are ranked and written, and the command exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.ranking import SCORES, score_features

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

    from hf_transfer.methods.feature.cache import FeatureCache
    from hf_transfer.models.backbones import Backbone

logger = logging.getLogger(__name__)


def _run_dict(args: argparse.Namespace, backbone: str, output_dir: str) -> dict[str, Any]:
    """The feature-mode run whose train features this ranking computes (also the --top_k config)."""
    run: dict[str, Any] = {"mode": "feature", "method": "linear", "backbone": backbone, "target": args.target}
    run["output_dir"] = output_dir
    optional = {
        "source": args.source,
        "label_policy": args.label_policy,
        "image_size": args.image_size,
        "crop_pct": args.crop_pct,
        "max_train_samples": args.max_train_samples,
        "image_column": args.image_column,
        "label_column": args.label_column,
        "feature_cache_dir": args.feature_cache_dir,
    }
    run.update({k: v for k, v in optional.items() if v is not None})
    run.update(seed=args.seed, input_path=args.input_path, feature_batch_size=args.feature_batch_size)
    return run


def check_args(args: argparse.Namespace) -> None:
    """Everything checkable before loading anything, each error one line naming what to fix."""
    from hf_transfer.data.spec import parse_dataset_spec
    from hf_transfer.models.backbones import check_backbone

    if len(args.backbones) < 2:
        raise TransferConfigError("rank needs at least two --backbones to compare.")
    dupes = sorted({b for b in args.backbones if args.backbones.count(b) > 1})
    if dupes:
        raise TransferConfigError(f"--backbones lists {dupes} more than once; give each candidate once.")
    for b in args.backbones:
        check_backbone(b)
    parse_dataset_spec(args.target)
    if args.source:
        parse_dataset_spec(args.source)
    elif args.label_policy is not None:
        raise TransferConfigError("--label_policy has no effect without --source; remove it.")
    if args.rank_by == "probe" and not args.probe:
        raise TransferConfigError("--rank_by probe needs --probe.")
    if args.top_k is not None and not 1 <= args.top_k <= len(args.backbones):
        raise TransferConfigError(f"--top_k must be between 1 and the number of candidates, got {args.top_k}.")
    if args.knn_k < 1:
        raise TransferConfigError(f"--knn_k must be >= 1, got {args.knn_k}.")
    if args.max_train_samples is not None and args.max_train_samples < 4:
        raise TransferConfigError(f"--max_train_samples must be >= 4, got {args.max_train_samples}.")
    if os.path.isfile(args.output_dir):
        raise TransferConfigError(f"--output_dir {args.output_dir!r} is a file; give a folder.")


def _source_probs(backbone: Backbone, features: npt.ArrayLike) -> np.ndarray:
    """The pretrained classifier's softmax over its own classes, from the cached (pooled) features."""
    import torch

    head = backbone.head
    with torch.inference_mode():
        w = head.weight.detach().cpu().double()
        b = head.bias.detach().cpu().double() if head.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        logits = torch.from_numpy(np.asarray(features, dtype=np.float64)) @ w.T + b
        return torch.softmax(logits, 1).numpy()


def rank_candidate(
    args: argparse.Namespace, model_id: str, train: Dataset, cache: FeatureCache, device: torch.device
) -> dict[str, Any]:
    """Load one candidate (keeping its own classifier when it has one), cache its features, score them."""
    import torch
    from transformers import set_seed

    from hf_transfer.methods.feature.cache import body_fingerprint
    from hf_transfer.models.backbones import checkpoint_label_names, load_backbone
    from hf_transfer.models.speed import set_memory_format, use_channels_last

    start = time.perf_counter()
    source_labels = checkpoint_label_names(model_id)
    set_seed(args.seed)  # a random-init candidate gets the weights a feature run with this seed gets
    backbone = load_backbone(
        model_id,
        source_labels or train.features["label"].names,
        image_size=args.image_size,
        crop_pct=args.crop_pct,
    )
    if use_channels_last("auto", backbone.model, device):
        set_memory_format(backbone.model, True)
        cache.channels_last = True
    misses = cache.misses
    features, labels, path = cache.get_or_compute(
        backbone, train, "train", args.feature_batch_size, device, body_fingerprint(backbone)
    )
    cache.channels_last = False
    feature_seconds = time.perf_counter() - start
    has_head = backbone.pretrained and backbone.head_pretrained
    probs = _source_probs(backbone, features.numpy()) if has_head else None
    scores = score_features(features.numpy(), labels.numpy(), probs, knn_k=args.knn_k, probe=args.probe, seed=args.seed)
    head_prefix = backbone.head_name + "."
    params = sum(p.numel() for n, p in backbone.model.named_parameters() if not n.startswith(head_prefix))
    seconds = time.perf_counter() - start
    del backbone
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "backbone": model_id,
        "scores": scores,
        "source_head": {"classes": len(source_labels)} if has_head else None,
        "feature_dim": int(features.shape[1]),
        "num_params": int(params),
        "num_images": int(features.shape[0]),
        "seconds": round(seconds, 3),
        "feature_seconds": round(feature_seconds, 3),
        "feature_cache": {"hit": cache.misses == misses, "path": path},
    }


def _order(candidates: list[dict[str, Any]], rank_by: str) -> list[dict[str, Any]]:
    """Best first by ``rank_by``; candidates without that score (n/a) last, in the given order."""

    def key(c: dict[str, Any]) -> tuple[int, float]:
        v = c["scores"].get(rank_by)
        return (0, -v) if v is not None and math.isfinite(v) else (1, 0.0)

    return sorted(candidates, key=key)


def format_table(candidates: list[dict[str, Any]], rank_by: str, score_names: list[str]) -> str:
    """The ranking as a text table, best first: each candidate's scores, size, time and cache use."""
    names = [rank_by] + [s for s in score_names if s != rank_by]
    header = ["#", "backbone", *names, "dim", "params", "seconds", "cache"]
    rows = []
    for i, c in enumerate(candidates, 1):
        cells = [str(i), c["backbone"]]
        for s in names:
            v = c["scores"].get(s)
            cells.append("n/a" if v is None else f"{v:.4f}")
        cache = "hit" if c["feature_cache"]["hit"] else "miss"
        cells += [str(c["feature_dim"]), f"{c['num_params'] / 1e6:.2f}M", f"{c['seconds']:.1f}", cache]
        rows.append(cells)
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:60] or "backbone"


def rank_backbones(args: argparse.Namespace) -> dict[str, Any]:
    """The ranking of ``args.backbones`` on ``args.target`` (see the module doc).

    Writes the outputs, holding ``--output_dir``'s lock from the argument checks to the last write (one writer per
    folder, as ``train``)."""
    from hf_transfer.runtime.folder_lock import lock_folder

    check_args(args)
    with lock_folder(args.output_dir, "hf-transfer rank"):
        return _rank_backbones(args)


def _rank_backbones(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`rank_backbones` once the output folder is held."""
    import torch
    from transformers import set_seed

    from hf_transfer.config import arguments_from_dict
    from hf_transfer.data.kshot import subset
    from hf_transfer.evaluation.plots import ranking_png
    from hf_transfer.methods.feature.cache import FeatureCache
    from hf_transfer.training.run_data import load_transfer_data

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transfer_args, _ = arguments_from_dict(_run_dict(args, args.backbones[0], args.output_dir))
    set_seed(args.seed)  # as a training run does before it loads its data
    data = load_transfer_data(transfer_args, args.seed)
    train = subset(data.target["train"], args.max_train_samples, args.seed)
    cache = FeatureCache(args.feature_cache_dir, input_path=args.input_path, decoded_cache_dir=None)
    total = time.perf_counter()
    candidates, not_ranked = [], []
    for model_id in args.backbones:
        logger.info("Ranking %s on %s (%d images).", model_id, data.target_name, len(train))
        try:
            candidates.append(rank_candidate(args, model_id, train, cache, device))
        except TransferConfigError as err:  # one candidate that cannot load (e.g. a damaged download): the rest
            logger.error("Not ranked: %s", err)
            not_ranked.append({"backbone": model_id, "error": str(err)})
    if not candidates:
        raise TransferConfigError("no candidate could be ranked: " + "; ".join(e["error"] for e in not_ranked))
    candidates = _order(candidates, args.rank_by)
    score_names = [s for s in SCORES if s != "probe" or args.probe]
    result = {
        "target": data.target_name,
        "target_spec": args.target,
        "source": data.source_name,
        "label_names": list(data.label_names),
        "num_images": len(train),
        "rank_by": args.rank_by,
        "seed": args.seed,
        "image_size": args.image_size,
        "device": str(device),
        "seconds": round(time.perf_counter() - total, 3),
        "ranking": [c["backbone"] for c in candidates],
        "candidates": candidates,
        "not_ranked": not_ranked,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    if args.top_k:
        result["top_k"] = _write_top_k(args, candidates[: args.top_k])
    with open(os.path.join(args.output_dir, "ranking.json"), "w") as f:
        json.dump(result, f, indent=1)
    ranking_png(
        [c["backbone"] for c in candidates],
        {s: [c["scores"].get(s) for c in candidates] for s in score_names},
        os.path.join(args.output_dir, "ranking.png"),
        title=f"Backbones for {data.target_name} (ranked by {args.rank_by})",
    )
    result["table"] = format_table(candidates, args.rank_by, score_names)
    return result


def _write_top_k(args: argparse.Namespace, best: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One feature-mode config per best candidate: the same data and cache, so its features are a hit."""
    import yaml

    out = []
    ranking = os.path.abspath(os.path.join(args.output_dir, "ranking.json"))
    for i, c in enumerate(best, 1):
        run_dir = os.path.join(args.output_dir, "runs", f"{i}-{_safe(c['backbone'])}")
        config = os.path.join(args.output_dir, f"train_top{i}.yaml")
        run = {**_run_dict(args, c["backbone"], run_dir), "ranking": ranking}  # the card's "Why this backbone"
        with open(config, "w") as f:
            yaml.safe_dump(run, f, sort_keys=False)
        out.append({"backbone": c["backbone"], "config": config, "command": f"hf-transfer train --config {config}"})
    return out
