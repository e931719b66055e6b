"""Task adaptation benchmark on the built-in digits: one command, one markdown table.

    python benchmarks/task_adaptation.py --results benchmarks/results/task_adaptation.md  # ~10-15 min, 2 CPU cores
    python benchmarks/task_adaptation.py --seeds 0 --steps 60 --pretrain_steps 300   # a quick look

The built-in backbone (timm ``test_resnet``) is random-init and nothing is downloaded, so the
benchmark first *makes* a pretrained backbone: a source-only run on printed digits (as the demo
does, here as a task-mode run on the source's labels). Every other run transfers from that folder to the real
handwritten digits (target labels):

- scratch: random init, trained on the target labels (reference)
- linear probe: feature mode (frozen backbone, cached features, linear head)
- full FT: everything trains (backbone at 0.1x the head's learning rate)
- partial: ``stem`` and ``stage_0`` frozen
- gradual: gradual unfreezing from the head backwards, one group every steps/6
- L2-SP, BSS: full FT with the regulariser
- LoRA at k in {1, 5, 10, all} labelled target images per class (adapter + head)

Reports target test accuracy (mean +- std over seeds), trainable parameters, the size on disk of
what a run publishes (the adapter for LoRA, the full model otherwise) and wall time per run;
writes ``--results`` (and its ``.json``): by default under the git-ignored ``outputs/benchmarks/``, so a trial
run never overwrites the committed ``benchmarks/results/task_adaptation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from _runs import add_run_options, set_run_options, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE, TARGET = "builtin:digits-printed", "builtin:digits-handwritten"
COMMON = {
    "backbone": "test_resnet",
    "image_size": 32,
    "crop_pct": 1.0,
    "augment": "light",
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 512,
    "optim": "sgd",
    "weight_decay": 5e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_steps": 50,
    "report_to": "none",
    "use_cpu": True,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "target": TARGET,
    "overwrite_output_dir": True,  # a rerun replaces the previous run's folder
}


def runs(steps: int, kshots: list[str]) -> list[tuple[str, str, dict]]:
    """(name, description, arguments); ``{pretrained}`` is the source-only run's folder."""
    ft = {
        "mode": "task",
        "backbone": "{pretrained}",
        "learning_rate": 0.05,
        "backbone_lr_scale": 0.1,
        "max_steps": steps,
    }
    out = [
        (
            "scratch",
            "random init, target labels",
            {"mode": "task", "method": "full", "learning_rate": 0.05, "max_steps": steps},
        ),
        (
            "linear probe",
            "feature mode: frozen backbone, cached features",
            {
                "mode": "feature",
                "backbone": "{pretrained}",
                "learning_rate": 0.5,
                "max_steps": 300,
                "augment": "standard",  # the default: features are computed once from un-augmented images
                "per_device_train_batch_size": 128,
            },
        ),
        ("full FT", "all layers, backbone lr x0.1", {**ft, "method": "full"}),
        ("partial", "stem + stage_0 frozen", {**ft, "method": "partial", "freeze": "stem,stage_0"}),
        (
            "gradual",
            f"unfreeze one group every {max(1, steps // 6)} steps",
            {**ft, "method": "full", "unfreeze_every": max(1, steps // 6)},
        ),
        ("L2-SP", "full FT + L2-SP (alpha 0.01, beta 0.01)", {**ft, "method": "full", "regularizer": "l2sp"}),
        ("BSS", "full FT + BSS (eta 1e-3, k 1)", {**ft, "method": "full", "regularizer": "bss"}),
    ]
    for k in kshots:
        lora = {
            "mode": "task",
            "method": "lora",
            "backbone": "{pretrained}",
            "learning_rate": 0.05,
            "max_steps": steps,
            "lora_r": 8,
            "publish": "adapter",  # what is measured: the adapter alone (the default also holds the merged model)
        }
        if k != "all":
            lora["k_shot"] = int(k)
        out.append((f"LoRA k={k}", f"LoRA r=8 on every conv + head, {k} labels/class", lora))
    return out


def _published_bytes(out_dir: str) -> int:
    for name in ("adapter_model.safetensors", "model.safetensors"):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            return os.path.getsize(path)
    return 0


def _head_parameters(out_dir: str) -> int | None:
    """Parameters of the exported classifier head (the only thing a linear probe trains)."""
    from safetensors import safe_open

    path = os.path.join(out_dir, "model.safetensors")
    with safe_open(path, "pt") as f:
        keys = [k for k in f.keys() if k.rsplit(".", 2)[-2] in ("fc", "head", "classifier")]
        return sum(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape()[1:] or [1])[0] for k in keys) or None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "task_adaptation"))
    parser.add_argument(
        "--results",
        default=os.path.join(ROOT, "outputs", "benchmarks", "task_adaptation.md"),
        help="markdown table (and .json beside it); the committed one: benchmarks/results/task_adaptation.md",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="training steps of each target run")
    parser.add_argument("--pretrain_steps", type=int, default=600, help="steps of the source-only 'pretraining'")
    parser.add_argument("--kshots", nargs="+", default=["1", "5", "10", "all"])
    parser.add_argument(
        "--reuse_pretrained",
        action="store_true",
        help="reuse output_dir/pretrained_source_only when it was made with the same --pretrain_steps",
    )
    parser.add_argument("--only", nargs="+", default=None, help="run only these rows (names in the table)")
    opts = parser.parse_args(argv)
    set_run_options(opts)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    start_all = time.time()
    pretrained = os.path.join(opts.output_dir, "pretrained_source_only")
    t = time.time()
    # source-only training = task mode on the source's labels; reused when the same folder and steps exist
    done = os.path.join(pretrained, "results.json")
    if (
        opts.reuse_pretrained
        and os.path.exists(done)
        and json.load(open(done)).get("hyperparameters", {}).get("max_steps") == opts.pretrain_steps
    ):
        pre = json.load(open(done))
    else:
        pre = train(
            {
                **COMMON,
                "mode": "task",
                "method": "full",
                "target": SOURCE,
                "learning_rate": 0.05,
                "max_steps": opts.pretrain_steps,
                "seed": 0,
                "output_dir": pretrained,
            }
        )
    pretrain = {"seconds": time.time() - t, "source": pre["metrics"]["target"]["accuracy"]}
    print(
        f"[bench] pretrained on the source: source test acc {pretrain['source']:.3f} ({pretrain['seconds']:.0f} s)",
        flush=True,
    )
    table: dict[str, dict] = {}
    for seed in opts.seeds:
        for name, description, overrides in runs(opts.steps, opts.kshots):
            if opts.only and name not in opts.only:
                continue
            out = os.path.join(opts.output_dir, f"seed{seed}", name.replace(" ", "_").replace("=", ""))
            args = {**COMMON, **overrides, "seed": seed, "output_dir": out}
            args = {k: (v.format(pretrained=pretrained) if isinstance(v, str) else v) for k, v in args.items()}
            t = time.time()
            res = train(args)
            seconds = time.time() - t
            row = table.setdefault(
                name,
                {
                    "description": description,
                    "acc": [],
                    "seconds": [],
                    "trainable": None,
                    "bytes": None,
                    "train_images": None,
                },
            )
            row["acc"].append(res["metrics"]["target"]["accuracy"])
            row["seconds"].append(seconds)
            row["trainable"] = res.get("trainable_parameters", row["trainable"])
            if res.get("mode") == "feature":
                row["trainable"] = _head_parameters(out)
            row["bytes"] = _published_bytes(out)
            print(f"[bench] seed {seed} {name}: target acc {row['acc'][-1]:.4f} ({seconds:.0f} s)", flush=True)
    summary = {
        "seeds": opts.seeds,
        "steps": opts.steps,
        "pretrain_steps": opts.pretrain_steps,
        "pretrain": pretrain,
        "runs": table,
        "total_seconds": time.time() - start_all,
        "command": "python benchmarks/task_adaptation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    }
    markdown = format_table(summary)
    os.makedirs(os.path.dirname(opts.results), exist_ok=True)
    with open(opts.results, "w") as f:
        f.write(markdown + "\n")
    with open(os.path.splitext(opts.results)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    print(markdown)
    return 0


def _fmt_acc(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def _fmt_bytes(n) -> str:
    return "-" if not n else (f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB")


def format_table(summary: dict) -> str:
    pre = summary["pretrain"]
    lines = [
        "# Task adaptation on the built-in digits",
        "",
        f"Command: `{summary['command'].strip()}` ({summary['machine']}; "
        f"total {summary['total_seconds'] / 60:.1f} min).",
        "",
        f"'Pretrained' backbone: timm `test_resnet` trained {summary['pretrain_steps']} steps on {SOURCE} (source "
        f"labels only; source test acc {100 * pre['source']:.1f}). Every row "
        f"adapts it to {TARGET} with target labels ({summary['steps']} steps, batch 64, SGD, cosine), except "
        "`scratch` (random init) and `linear probe` (300 steps on cached features). Target test accuracy % over "
        f"seeds {summary['seeds']}; 'published' = what the run writes for the Hub (adapter for LoRA, full model "
        "otherwise).",
        "",
        "| run | what | target acc | trainable params | published size | time/run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary["runs"].items():
        trainable = f"{row['trainable']:,}" if row["trainable"] else "-"
        lines.append(
            f"| {name} | {row['description']} | {_fmt_acc(row['acc'])} | {trainable} | "
            f"{_fmt_bytes(row['bytes'])} | {statistics.fmean(row['seconds']):.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
