"""``hf-transfer evaluate MODEL DATASET [--split test] [--output_dir DIR]``: its options and its console summary;
the scoring is :mod:`hf_transfer.evaluation.evaluate`'s."""

from __future__ import annotations

import argparse

import numpy as np

from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.label_match import _first
from hf_transfer.evaluation.metrics import unscored_message
from hf_transfer.evaluation.model_source import one_line
from hf_transfer.runtime.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-transfer evaluate",
        allow_abbrev=False,
        description="Score an image classifier (Hub id, run folder or published repo) on a labelled dataset, "
        "classes matched by name: accuracy, macro-F1, per-class accuracy, confusion matrix.",
    )
    p.add_argument("model", help="Hub id (org/name, timm/name), a run folder, or a published repo (full or LoRA)")
    p.add_argument("dataset", help="dataset spec: builtin:NAME, org/name[:config][@rev][#split], or a local folder")
    p.add_argument("--revision", default=None, help="the model's revision (branch, tag or commit) on the Hub")
    p.add_argument(
        "--split",
        default="test",
        help="test (default: the test split training evaluates on, or its seeded hold-out), train, "
        "or any other stored split name (scored whole)",
    )
    p.add_argument("--image_column", default=None, help="the image column (default: found by type)")
    p.add_argument("--label_column", default=None, help="the label column (default: found by type / name)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the hold-out test split (datasets without one) and of --max_samples: a run folder's own seed, "
        "else 42 (the Trainer's default)",
    )
    p.add_argument("--max_samples", type=int, default=None, help="score a seeded subset (as max_eval_samples)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N, mps")
    p.add_argument("--input_path", default="fast", choices=("fast", "stock"), help="as in training (fast)")
    p.add_argument("--decoded_cache_dir", default=None, help="default: $HF_TRANSFER_CACHE/decoded")
    p.add_argument("--num_workers", type=int, default=0, help="data loader (and decoding) worker processes")
    p.add_argument("--output_dir", default=None, help="write evaluation.json and the confusion matrix (PNG + JSON)")
    p.add_argument("--overwrite_output_dir", action="store_true", help="write into a folder that holds files")
    p.add_argument("--skip_bad_images", action="store_true", help="drop rows whose image cannot be decoded")
    return p


def format_summary(result: dict, max_classes: int = 20) -> str:
    """What was scored, accuracy and macro-F1, and per-class accuracy (the weakest ``max_classes`` when more)."""
    m = result["metrics"]
    excluded = sum(result["excluded_rows"].values())
    lines = [
        f"{result['model']} ({result['model_kind']} model) on {result['dataset']}, split {result['split']}: "
        f"{m['num_samples']} rows scored" + (f", {excluded} excluded (classes the model lacks)" if excluded else ""),
        f"classes matched by name: {len(result['label_names'])}"
        + (f"; model only: {_first(result['model_only_classes'])}" if result["model_only_classes"] else "")
        + (f"; dataset only: {_first(result['dataset_only_classes'])}" if result["dataset_only_classes"] else ""),
        f"accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}"
        + (
            f"   (argmax over all {len(result['label_names']) + len(result['model_only_classes'])} model classes: "
            f"{m['unrestricted_accuracy']:.4f})"
            if result["model_only_classes"]
            else ""
        ),
    ]
    if result.get("unscored_classes"):
        lines.append(unscored_message("scored", result["unscored_classes"], len(result["label_names"])))
    lines.append("")
    support = np.asarray(m["confusion_matrix"]).sum(axis=1)
    rows = list(zip(result["label_names"], m["per_class_accuracy"], support, strict=True))
    if len(rows) > max_classes:  # a short table: the weakest classes (all of them are in evaluation.json)
        rows = sorted((r for r in rows if r[1] is not None), key=lambda r: r[1])[:max_classes]
        lines.append(f"the {len(rows)} classes with the lowest accuracy (of {len(result['label_names'])}):")
    width = max(len("class"), *(len(str(r[0])) for r in rows))
    lines.append(f"{'class'.ljust(width)}  accuracy  rows")
    lines.append(f"{'-' * width}  --------  ----")
    for name, acc, n in rows:
        lines.append(f"{str(name).ljust(width)}  {'-' if acc is None else f'{acc:.4f}':>8}  {int(n):>4}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run ``hf-transfer evaluate`` with ``argv``; prints the summary, returns the exit status."""
    from hf_transfer.evaluation.evaluate import OUTPUTS, evaluate

    args = _parser().parse_args(argv)
    setup_logging()
    try:
        result = evaluate(args)
    except TransferConfigError as err:  # e.g. a datasets or Hub message quoted inside: keep the error one line
        raise TransferConfigError(one_line(str(err))) from err
    print(format_summary(result))
    where = f"; wrote {', '.join(OUTPUTS)} to {args.output_dir}" if args.output_dir else ""
    print(f"Evaluated in {result['seconds']:.1f}s on {result['device']}{where}")
    return 0
