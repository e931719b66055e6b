"""The sweep behind hf_transfer's recipe defaults (``hf_transfer/training/defaults.py``).

For each mode (task full fine-tuning, task LoRA, feature) it runs ``TrainingArguments``' own defaults, the shipped
recipe (no optimizer, schedule, batch or length given: what a user gets) and candidate recipes, over several seeds,
on small cases of the kind a new user brings:

* ``own-digits``: a 3-class folder of 90 + 30 handwritten-digit JPEGs (``scripts/make_image_folder.py --kind
  digits``), from the demo's printed-digit backbone (its features suit the data, as an ImageNet backbone suits
  photos);
* ``own-shapes``: a 3-class folder of drawn shapes (``--kind shapes``), far from what that backbone saw;
* ``handwritten``: the built-in ``digits-handwritten`` domain (10 classes, 600 + 299 images).

The backbone is made first (``hf-transfer demo --only source_only``, 600 steps on printed digits) unless
``--backbone`` names one. Writes a markdown table (mean and spread of the target test accuracy over the seeds).

    python benchmarks/defaults_sweep.py --seeds 0 1 2 --out benchmarks/results/defaults.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

from _runs import train  # noqa: E402
from make_image_folder import write_digits, write_shapes  # noqa: E402

#: TrainingArguments' own defaults, written out so that the recipe does not replace them
HF_DEFAULTS = {
    "optim": "adamw_torch_fused",
    "learning_rate": 5e-5,
    "weight_decay": 0.0,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "per_device_train_batch_size": 8,
    "num_train_epochs": 3,
}
ADAMW = {"optim": "adamw_torch_fused", "weight_decay": 0.05, "lr_scheduler_type": "cosine", "warmup_steps": 0.05}
SGD = {
    "optim": "sgd",
    "optim_args": "momentum=0.9,nesterov=True",
    "weight_decay": 5e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
}

#: (mode label, the run's mode/method arguments, {arm name: arguments}); "recipe" gives nothing: the shipped defaults
ARMS = {
    "task full": (
        {"mode": "task", "method": "full"},
        {
            "TrainingArguments defaults": HF_DEFAULTS,
            "recipe (shipped defaults)": {},
            "AdamW 3e-4, 30 ep": {**ADAMW, "learning_rate": 3e-4, "num_train_epochs": 30},
            "AdamW 3e-3, 30 ep": {**ADAMW, "learning_rate": 3e-3, "num_train_epochs": 30},
            "AdamW 1e-3, 10 ep": {**ADAMW, "learning_rate": 1e-3, "num_train_epochs": 10},
            "SGD 0.03, 30 ep": {**SGD, "learning_rate": 0.03, "num_train_epochs": 30},
        },
    ),
    "task lora": (
        {"mode": "task", "method": "lora", "publish": "merged"},
        {
            "TrainingArguments defaults": HF_DEFAULTS,
            "recipe (shipped defaults)": {},
            "AdamW 1e-3, 30 ep": {**ADAMW, "learning_rate": 1e-3, "num_train_epochs": 30},
            "AdamW 2e-2, 30 ep": {**ADAMW, "learning_rate": 2e-2, "num_train_epochs": 30},
            "SGD 0.05, 30 ep": {**SGD, "learning_rate": 0.05, "num_train_epochs": 30},
        },
    ),
    "feature": (
        {"mode": "feature"},
        {
            "TrainingArguments defaults": HF_DEFAULTS,
            "recipe (shipped defaults)": {},
            "AdamW 1e-3, 100 ep": {**ADAMW, "learning_rate": 1e-3, "num_train_epochs": 100},
            "AdamW 1e-1, 100 ep": {**ADAMW, "learning_rate": 1e-1, "num_train_epochs": 100},
            "L-BFGS head": {"head_solver": "lbfgs"},
        },
    ),
}


def make_backbone(out: Path) -> str:
    """The demo's source-only run (printed digits, 600 steps): a pretrained backbone made offline."""
    folder = out / "seed0" / "source_only"
    if not (folder / "model.safetensors").exists():
        cmd = [sys.executable, "-m", "hf_transfer.cli", "demo", "--seeds", "0", "--only", "source_only"]
        subprocess.run([*cmd, "--output_dir", str(out)], check=True)
    return str(folder)


def cases(work: Path) -> dict[str, str]:
    """name -> target dataset spec; the folders are written once."""
    digits, shapes = work / "own-digits", work / "own-shapes"
    if not digits.exists():
        write_digits(digits)
    if not shapes.exists():
        write_shapes(shapes)
    return {"own-digits": str(digits), "own-shapes": str(shapes), "handwritten": "builtin:digits-handwritten"}


def one_run(backbone: str, target: str, mode_args: dict, arm: dict, seed: int, out: Path) -> float:
    """Target test accuracy of one run."""
    args = {
        "backbone": backbone,
        "target": target,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "seed": seed,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 10,
        **mode_args,
        **arm,
    }
    return train(args)["metrics"]["target"]["accuracy"]


def main() -> None:
    """Run every arm on every case over the seeds; print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--cases", nargs="+", default=["own-digits", "own-shapes", "handwritten"])
    parser.add_argument("--backbone", help="backbone of every run (default: made by the demo's source-only run)")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "benchmarks" / "defaults")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "defaults.md")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backbone = opts.backbone or make_backbone(opts.work / "backbone")
    targets = {k: v for k, v in cases(opts.work).items() if k in opts.cases}
    results: dict = {}
    start = time.time()
    for mode in opts.modes:
        mode_args, arms = ARMS[mode]
        for arm, arm_args in arms.items():
            for case, target in targets.items():
                accs = [
                    one_run(backbone, target, mode_args, arm_args, seed, opts.work / "runs" / "last")
                    for seed in opts.seeds
                ]
                results.setdefault(mode, {}).setdefault(arm, {})[case] = accs
                print(f"{mode} | {arm} | {case}: {[round(100 * a, 1) for a in accs]}", flush=True)
    lines = [
        "# Recipe defaults: the sweep",
        "",
        f"`python benchmarks/defaults_sweep.py {' '.join(sys.argv[1:])}` on the CPU "
        f"({time.time() - start:.0f} s). Target test accuracy %, mean +- std over {len(opts.seeds)} seeds. "
        "Backbone: the demo's source-only run (test_resnet, 600 steps on printed digits, 32 px). "
        "'recipe' is a run that sets no optimizer, learning rate, schedule, batch or length: what a user gets.",
        "",
    ]
    for mode, arms in results.items():
        lines += [f"## {mode}", "", "| arm | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
        for arm, per_case in arms.items():
            cells = [
                f"{100 * statistics.mean(a):.1f} +- {100 * (statistics.stdev(a) if len(a) > 1 else 0):.1f}"
                for a in per_case.values()
            ]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(lines))
    (opts.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
