"""Fine-tuning recipe benchmark on the built-in digits: timm's recipe pieces, robust fine-tuning, and the peer.

    python benchmarks/finetune_recipe.py --results benchmarks/results/finetune_recipe.md   # 3 seeds, 2 targets
    python benchmarks/finetune_recipe.py --seeds 0 --steps 60 --pretrain_steps 200 --targets digits-handwritten

As in ``task_adaptation.py``, the random-init timm ``test_resnet`` is first *pretrained* on printed digits (source
labels only); every row then fine-tunes that folder on one target domain's labels at a fixed budget (``--steps``,
batch 64, SGD, cosine). In-distribution (ID) is the target's test split; out-of-distribution (OOD) is the mean over
the other built-in domains of the same ten classes (scored with ``hf-transfer evaluate``'s scoring on their test
splits). Rows:

- plain FT: crop (``augment=light``) only;
- each recipe piece on top of it (``--aa``, ``--reprob``, ``--mixup``/``--cutmix``, ``--label_smoothing_factor``,
  ``--drop_path``), then all of them together (``full recipe``);
- robust fine-tuning: model EMA (``--model_ema``), LP-FT (``--method lp_ft``), WiSE-FT (``--wise_ft_alpha sweep``,
  the alpha chosen on a validation hold-out of the target's training split), and combinations;
- ``peer``: the stock ``transformers.Trainer`` fed by ``timm.data.create_transform(is_training=True, ...)`` in the
  DataLoader and ``timm.data.Mixup`` + ``SoftTargetCrossEntropy`` in ``compute_loss``: timm's own recipe, same
  model, data, optimizer, schedule, steps and batch, the same recipe values.

img/s is training images per second of the training loop (first to last step, one process, this CPU); s/run is
the whole run (decoding, evaluation and export included). Results go to ``--results`` (and its ``.json``): by
default under the git-ignored ``outputs/benchmarks/``.
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
SOURCE = "builtin:digits-printed"
DOMAINS = ("digits-printed", "digits-handwritten", "digits-blended")
BATCH = 64
COMMON = {
    "mode": "task",
    "method": "full",
    "backbone": "test_resnet",
    "image_size": 32,
    "crop_pct": 1.0,
    "augment": "light",
    "per_device_train_batch_size": BATCH,
    "per_device_eval_batch_size": 512,
    "optim": "sgd",
    "optim_args": "momentum=0.9,nesterov=True",
    "learning_rate": 0.05,
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
    "overwrite_output_dir": True,
}
AA = "rand-m9-mstd0.5-inc1"
RECIPE = {
    "aa": AA,
    "reprob": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "label_smoothing_factor": 0.1,
    "drop_path": 0.1,
}


def rows() -> list[tuple[str, str, dict]]:
    """(name, description, arguments over COMMON); the peer row is run by :func:`peer_run`."""
    return [
        ("plain FT", "crop only", {}),
        ("+ aa", f"RandAugment {AA}", {"aa": AA}),
        ("+ reprob", "random erasing p=0.25 (pixel)", {"reprob": 0.25}),
        ("+ mixup/cutmix", "mixup 0.8, cutmix 1.0 (soft targets)", {"mixup": 0.8, "cutmix": 1.0}),
        ("+ label smoothing", "label_smoothing_factor 0.1", {"label_smoothing_factor": 0.1}),
        ("+ drop_path", "drop-path 0.1", {"drop_path": 0.1}),
        ("full recipe", "all of the above", dict(RECIPE)),
        (
            "+ EMA",
            "model EMA (decay 0.99, warm-up), EMA or raw chosen on a 10% validation hold-out",
            {"model_ema": True, "model_ema_decay": 0.99, "model_ema_warmup": True},
        ),
        ("full recipe + EMA", "both", {**RECIPE, "model_ema": True, "model_ema_decay": 0.99, "model_ema_warmup": True}),
        ("LP-FT", "linear probe for half the steps (lr x10), then everything", {"method": "lp_ft"}),
        (
            "WiSE-FT",
            "plain FT, weights interpolated towards the start (its own head), alpha 0..1 chosen on validation",
            {"wise_ft_alpha": "sweep"},
        ),
        (
            "LP-FT + WiSE-FT",
            "LP-FT, interpolated towards the start with the probe's head",
            {"method": "lp_ft", "wise_ft_alpha": "sweep"},
        ),
    ]


class _LoopTimer:
    """Seconds from the first to the last training step (a TrainerCallback, built lazily: no import at load)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            seconds = 0.0

            def on_train_begin(self, args, state, control, **kw):
                self.start = time.perf_counter()

            def on_train_end(self, args, state, control, **kw):
                self.seconds = time.perf_counter() - self.start

        return Timer()


def ood_scores(model_dir: str, target: str) -> dict[str, float]:
    """Accuracy of the exported model on the test split of every other built-in domain."""
    from hf_transfer.cli.evaluate import _parser
    from hf_transfer.evaluation.evaluate import evaluate

    out = {}
    for domain in DOMAINS:
        if domain == target:
            continue
        args = _parser().parse_args([model_dir, f"builtin:{domain}", "--device", "cpu"])
        out[domain] = evaluate(args)["metrics"]["accuracy"]
    return out


def ours(args: dict) -> tuple[dict, float]:
    """One hf_transfer run and its training-loop seconds."""
    from _runs import transfer_arguments

    from hf_transfer.training.run import run_transfer

    timer = _LoopTimer()
    results = run_transfer(*transfer_arguments(args), callbacks=[timer])
    return results, timer.seconds


def peer_run(pretrained: str, target: str, seed: int, steps: int, out: str) -> tuple[float, float]:
    """timm's recipe through the stock Trainer: (target test accuracy, training-loop seconds); saves to ``out``."""
    import shutil

    import torch
    from timm.data import Mixup, create_transform
    from timm.loss import SoftTargetCrossEntropy
    from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

    from hf_transfer.cli.evaluate import _parser
    from hf_transfer.data.load import load_domain
    from hf_transfer.evaluation.evaluate import evaluate

    torch.manual_seed(seed)
    data = load_domain(f"builtin:{target}", seed=seed)
    transform = create_transform(
        32,
        is_training=True,
        scale=(0.75, 1.0),  # augment=light: the same crop range, no flip
        ratio=(0.9, 1.1),
        hflip=0.0,
        color_jitter=None,
        auto_augment=AA,
        interpolation="bicubic",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        re_prob=0.25,
        re_mode="pixel",
    )

    def to_pixels(batch):
        return {"pixel_values": [transform(im.convert("RGB")) for im in batch["image"]], "labels": batch["label"]}

    train_set = data["train"].with_transform(to_pixels)
    model = AutoModelForImageClassification.from_pretrained(pretrained, model_args={"drop_path_rate": 0.1})
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=model.config.num_labels)
    criterion = SoftTargetCrossEntropy()

    class TimmRecipeTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            x, y = mixup(inputs["pixel_values"], inputs["labels"])
            outputs = model(pixel_values=x)
            loss = criterion(outputs.logits, y)
            return (loss, outputs) if return_outputs else loss

    training = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        optim="sgd",
        optim_args="momentum=0.9,nesterov=True",
        learning_rate=COMMON["learning_rate"],
        weight_decay=COMMON["weight_decay"],
        lr_scheduler_type="cosine",
        warmup_steps=COMMON["warmup_steps"],
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_drop_last=True,  # timm's Mixup needs an even batch
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=seed,
    )
    timer = _LoopTimer()
    TimmRecipeTrainer(model=model, args=training, train_dataset=train_set, callbacks=[timer]).train()
    model.config.model_args = {}  # inference builds the model without drop-path
    model.save_pretrained(out)
    shutil.copy(os.path.join(pretrained, "preprocessor_config.json"), out)
    args = _parser().parse_args([out, f"builtin:{target}", "--device", "cpu", "--seed", str(seed)])
    return evaluate(args)["metrics"]["accuracy"], timer.seconds


def _choice(results: dict) -> str:
    """What a run chose on validation: EMA or raw weights, the WiSE-FT alpha."""
    parts = []
    if results.get("model_ema"):
        parts.append(results["model_ema"]["exported"])
    if results.get("wise_ft"):
        parts.append(f"a={results['wise_ft']['exported_alpha']:g}")
    return " ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "finetune_recipe"))
    parser.add_argument("--results", default=os.path.join(ROOT, "outputs", "benchmarks", "finetune_recipe.md"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="training steps of each fine-tuning run")
    parser.add_argument("--pretrain_steps", type=int, default=600, help="steps of the source-only pretraining")
    parser.add_argument("--targets", nargs="+", default=["digits-handwritten", "digits-blended"])
    parser.add_argument("--only", nargs="+", default=None, help="run only these rows (names in the table)")
    opts = parser.parse_args(argv)
    set_run_options(opts)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one weight-loading bar per scored domain otherwise

    start_all = time.time()
    pretrained = os.path.join(opts.output_dir, "pretrained_source_only")
    done = os.path.join(pretrained, "results.json")
    if os.path.exists(done) and json.load(open(done))["hyperparameters"]["max_steps"] == opts.pretrain_steps:
        pre = json.load(open(done))
    else:
        pre = train({**COMMON, "target": SOURCE, "max_steps": opts.pretrain_steps, "seed": 0, "output_dir": pretrained})
    print(f"[bench] pretrained: source test acc {pre['metrics']['target']['accuracy']:.3f}", flush=True)
    table: dict[str, dict] = {}
    for target in opts.targets:
        for seed in opts.seeds:
            for name, description, overrides in [*rows(), ("peer", "stock Trainer + timm's recipe", None)]:
                if opts.only and name not in opts.only:
                    continue
                out = os.path.join(opts.output_dir, target, f"seed{seed}", name.replace(" ", "_").replace("/", "_"))
                t = time.time()
                choice = ""
                if overrides is None:
                    acc, loop = peer_run(pretrained, target, seed, opts.steps, out)
                else:
                    args = {
                        **COMMON,
                        **overrides,
                        "backbone": pretrained,
                        "target": f"builtin:{target}",
                        "max_steps": opts.steps,
                        "seed": seed,
                        "output_dir": out,
                    }
                    res, loop = ours(args)
                    acc = res["metrics"]["target"]["accuracy"]
                    choice = _choice(res)
                ood = ood_scores(out, target)
                row = table.setdefault(
                    f"{target}|{name}",
                    {"description": description, "id": [], "ood": [], "ips": [], "s": [], "chosen": []},
                )
                row["id"].append(acc)
                row["ood"].append(statistics.fmean(ood.values()))
                row["ips"].append(opts.steps * BATCH / loop)
                row["s"].append(time.time() - t)
                row["chosen"].append(choice)
                print(
                    f"[bench] {target} seed {seed} {name}: ID {acc:.4f} OOD {row['ood'][-1]:.4f} "
                    f"{row['ips'][-1]:.0f} img/s ({row['s'][-1]:.0f} s)",
                    flush=True,
                )
    summary = {
        "seeds": opts.seeds,
        "steps": opts.steps,
        "pretrain_steps": opts.pretrain_steps,
        "pretrain_source_acc": pre["metrics"]["target"]["accuracy"],
        "targets": opts.targets,
        "runs": table,
        "total_seconds": time.time() - start_all,
        "command": "python benchmarks/finetune_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
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


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = scale * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {scale * statistics.stdev(values):.{digits}f}"


def format_table(summary: dict) -> str:
    lines = [
        "# Fine-tuning recipe on the built-in digits",
        "",
        f"Command: `{summary['command'].strip()}` ({summary['machine']}; "
        f"total {summary['total_seconds'] / 60:.1f} min).",
        "",
        f"Backbone: timm `test_resnet` pretrained {summary['pretrain_steps']} steps on {SOURCE} (source test acc "
        f"{100 * summary['pretrain_source_acc']:.1f}); every row fine-tunes it for {summary['steps']} steps (batch "
        f"{BATCH}, SGD + Nesterov 0.05, cosine) on the target's labels. ID: target test accuracy %; OOD: mean test "
        f"accuracy % on the other built-in domains; mean +- std over seeds {summary['seeds']}. img/s: the training "
        "loop's images per second on this CPU.",
    ]
    for target in summary["targets"]:
        lines += [
            "",
            f"## target {target}",
            "",
            "| run | what | ID acc | OOD acc | img/s | s/run | chosen on validation (per seed) |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, row in summary["runs"].items():
            if not key.startswith(target + "|"):
                continue
            name = key.split("|", 1)[1]
            lines.append(
                f"| {name} | {row['description']} | {_pm(row['id'])} | {_pm(row['ood'])} | "
                f"{statistics.fmean(row['ips']):.0f} | {statistics.fmean(row['s']):.0f} | "
                f"{', '.join(c for c in row.get('chosen', []) if c) or '-'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
