"""The built-in demo: every transfer mode on the built-in digits pair, on CPU, in a few minutes.

printed digits (labelled source) -> real handwritten digits (target). Nothing is downloaded: the
backbone is timm's ``test_resnet`` architecture with random init, so the demo first *makes* a
pretrained backbone (the source-only run) and the feature / task runs transfer from it:

1. ``scratch``      task mode, random init, trained on the target labels (reference)
2. ``source_only``  domain mode, no alignment: train on source, test on target (the baseline)
3. ``feature``      feature mode: the source-only backbone frozen, cached features, linear head on
                    target labels
4. ``dann``         domain mode, DANN: source labels + unlabelled target images
5. ``task``         task mode: the source-only backbone fine-tuned on target labels (head at
                    ``learning_rate``, backbone at 0.1x)

Prints a table of target accuracy (mean +- std over seeds) with the gain over source-only and
writes one output folder per run plus ``demo_results.json`` and ``demo_results.md``; every run's card
compares with its seed's source-only run (:func:`attach_baseline`).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_OUTPUT = "outputs/demo"

COMMON = {
    "backbone": "test_resnet",
    "image_size": 32,
    "crop_pct": 1.0,
    "augment": "light",
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 512,
    "optim": "sgd",
    "optim_args": "momentum=0.9,nesterov=True",
    "weight_decay": 1e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_steps": 100,
    "report_to": "none",
    "use_cpu": True,
    "dataloader_num_workers": 0,
    "overwrite_output_dir": True,  # the demo owns outputs/demo: a rerun replaces the previous one
}
SOURCE, TARGET = "builtin:digits-printed", "builtin:digits-handwritten"


def demo_runs(steps: int) -> list[tuple[str, str, dict[str, Any]]]:
    """The demo's runs as (name, description, arguments), in run order.

    ``{source_only}`` in an argument is that run's output folder."""
    return [
        (
            "scratch",
            "random init, trained on target labels",
            {"mode": "task", "method": "full", "target": TARGET, "learning_rate": 0.02, "max_steps": steps},
        ),
        (
            "source_only",
            "trained on source only (baseline)",
            {
                "mode": "domain",
                "method": "source_only",
                "source": SOURCE,
                "target": TARGET,
                "learning_rate": 0.02,
                "max_steps": steps,
            },
        ),
        (
            "feature",
            "source backbone frozen, cached features, linear head on target labels",
            {
                "mode": "feature",
                "backbone": "{source_only}",
                "source": SOURCE,
                "target": TARGET,
                "augment": "standard",  # the default: features are computed once from un-augmented images
                "learning_rate": 0.1,
                "max_steps": 300,
                "per_device_train_batch_size": 128,
            },
        ),
        (
            "dann",
            "DANN: source labels + unlabelled target",
            {
                "mode": "domain",
                "method": "dann",
                "source": SOURCE,
                "target": TARGET,
                "learning_rate": 0.02,
                "max_steps": steps,
                "method_args": {"hold": 0.15},
            },
        ),
        (
            "task",
            "source backbone fine-tuned on target labels",
            {
                "mode": "task",
                "method": "full",
                "backbone": "{source_only}",
                "source": SOURCE,
                "target": TARGET,
                "learning_rate": 0.02,
                "backbone_lr_scale": 0.1,
                "max_steps": max(steps // 2, 1),
            },
        ),
    ]


def run_demo(
    output_dir: str = DEFAULT_OUTPUT,
    seeds: Sequence[int] = (0,),
    steps: int = 600,
    only: list[str] | None = None,
    report_to: str | None = None,
) -> dict[str, Any]:
    """Run every demo run for each seed into ``output_dir``; writes and returns the summary of their accuracies.

    ``report_to``: where every run logs as it trains (the Trainer's integrations, e.g. ``trackio``; default none);
    each run is named ``demo-seed<seed>-<run>``."""
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    table: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        outputs: dict[str, str] = {}
        for name, description, overrides in demo_runs(steps):
            if only and name not in only:
                continue
            out = os.path.join(output_dir, f"seed{seed}", name)
            args = {**COMMON, **overrides, "seed": seed, "output_dir": out}
            if report_to is not None:
                args.update(report_to=report_to, run_name=f"demo-seed{seed}-{name}")
            args = {k: (v.format(**outputs) if isinstance(v, str) and "{" in v else v) for k, v in args.items()}
            transfer_args, training_args = arguments_from_dict(args)
            print(
                f"[demo] seed {seed} {name}: {description} ({transfer_args.mode}/{transfer_args.method}, "
                f"{training_args.max_steps} steps) ...",
                flush=True,
            )
            start = time.time()
            results = run_transfer(transfer_args, training_args)
            outputs[name] = out
            row = table.setdefault(name, {"description": description, "target": [], "source": [], "seconds": []})
            row["target"].append(results["metrics"]["target"]["accuracy"])
            if "source" in results["metrics"]:
                row["source"].append(results["metrics"]["source"]["accuracy"])
            row["seconds"].append(time.time() - start)
            print(
                f"[demo] seed {seed} {name}: target accuracy {row['target'][-1]:.4f} ({row['seconds'][-1]:.0f} s)",
                flush=True,
            )
        attach_baseline(outputs)
    summary = {"seeds": list(seeds), "steps": steps, "runs": table}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "demo_results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    markdown = format_table(summary)
    with open(os.path.join(output_dir, "demo_results.md"), "w") as f:
        f.write(markdown + "\n")
    print(markdown)
    return summary


def attach_baseline(outputs: dict[str, str]) -> list[str]:
    """Re-write the card of every other run of a seed with that seed's ``source_only`` run as its baseline.

    Training writes each card alone, and the scratch run comes before the baseline exists. Returns
    the folders whose cards now compare with it ([] when the seed had no source-only run)."""
    from hf_transfer.hub.cards import write_card

    baseline = outputs.get("source_only")
    if baseline is None:
        return []
    others = [folder for name, folder in outputs.items() if name != "source_only"]
    for folder in others:
        write_card(folder, None, baseline_results=baseline)
    return others


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def format_table(summary: dict[str, Any]) -> str:
    """The Markdown table of a demo summary: each run's mean accuracies over the seeds, and its gain."""
    runs = summary["runs"]
    base = runs.get("source_only", {}).get("target")
    base_mean = statistics.fmean(base) if base else None
    lines = [
        f"Built-in pair {SOURCE} -> {TARGET}, target test accuracy % over seeds {summary['seeds']}:",
        "",
        "| run | what | target acc | vs source-only | source acc | time/run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in runs.items():
        gain = (
            "-"
            if base_mean is None or name == "source_only"
            else f"{100 * (statistics.fmean(row['target']) - base_mean):+.1f}"
        )
        lines.append(
            f"| {name} | {row['description']} | {_mean_std(row['target'])} | {gain} | "
            f"{_mean_std(row['source'])} | {statistics.fmean(row['seconds']):.0f} |"
        )
    return "\n".join(lines)
