"""How well ``hf-transfer rank``'s scores predict fine-tuned accuracy, on a zoo built offline.

    OMP_NUM_THREADS=1 python benchmarks/rank_backbones.py --out benchmarks/results/rank_backbones.md  # ~10 min
    OMP_NUM_THREADS=1 python benchmarks/rank_backbones.py --quick   # a smoke run: tiny budgets

Nothing is downloaded. The zoo is *made* here: small timm architectures "pretrained" by this project's own
training (task mode, full fine-tuning, on a built-in source's labels, for a different number of steps each);
each run folder is then a local backbone with its pretrained head (so LEEP/NCE apply), plus random-init
architectures (no head: LEEP/NCE n/a). Ground truth: each candidate's target test accuracy after one fixed
fine-tuning recipe (task mode, method full, one seed, ``--steps`` steps) on each built-in target. A target
is ranked over the candidates whose source is another domain (or random init): a checkpoint pretrained on
the target itself is left out of that target's zoo. Reported per score: weighted Kendall tau (scipy
``weightedtau``, hyperbolic weights on the rank: the measure of the LogME/SFDA papers) against the ground
truth, averaged over targets; top-1 hit rate; and the wall time of ranking all candidates against that of
fine-tuning them all. Writes the markdown table (and a .json beside it) to ``--out``: by default under the
git-ignored ``outputs/benchmarks/``, so a trial run never overwrites the committed results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time

from _runs import add_run_options, set_run_options, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("digits-handwritten", "digits-blended", "digits-printed")
SCORES = ("logme", "leep", "nce", "hscore", "sfda", "knn")

#: (name, timm architecture, source domain or None for random init, pretraining steps)
ZOO = [
    ("resnet-random", "test_resnet", None, 0),
    ("effnet-random", "test_efficientnet", None, 0),
    ("vit-random", "test_vit", None, 0),
    ("resnet-printed-600", "test_resnet", "digits-printed", 600),
    ("resnet-printed-100", "test_resnet", "digits-printed", 100),
    ("effnet-printed-600", "test_efficientnet", "digits-printed", 600),
    ("vit-printed-600", "test_vit", "digits-printed", 600),
    ("resnet-blended-600", "test_resnet", "digits-blended", 600),
    ("effnet-blended-300", "test_efficientnet", "digits-blended", 300),
    ("resnet-handwritten-400", "test_resnet", "digits-handwritten", 400),
    ("resnet18-handwritten-150", "resnet18", "digits-handwritten", 150),
]

COMMON = {
    "mode": "task",
    "method": "full",
    "image_size": 32,
    "crop_pct": 1.0,
    "per_device_train_batch_size": 64,
    "augment": "light",
    "per_device_eval_batch_size": 256,
    "optim": "sgd",
    "learning_rate": 0.05,
    "weight_decay": 5e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_steps": 1000,
    "report_to": "none",
    "use_cpu": True,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "max_eval_samples": 500,
    "seed": 0,
    "overwrite_output_dir": True,
}


def _zoo_for(target: str, zoo: list[tuple]) -> list[tuple]:
    """The candidates of one target: every one whose source is another domain (or random init)."""
    return [c for c in zoo if c[2] != target]


def weighted_tau(scores: list, truth: list, na_last: bool = False) -> float | None:
    """scipy's weighted Kendall tau over the candidates where the score is defined (None if < 3); with
    ``na_last``, over every candidate, n/a (LEEP/NCE without a source head) ranked below all, tied, as
    ``hf-transfer rank`` orders them."""
    from scipy.stats import weightedtau

    if na_last:
        low = min((v for v in scores if v is not None), default=0.0) - 1.0
        scores = [low if v is None else v for v in scores]
    pairs = [(s, t) for s, t in zip(scores, truth, strict=True) if s is not None]
    if len(pairs) < 3:
        return None
    tau = float(weightedtau([p[0] for p in pairs], [p[1] for p in pairs]).statistic)
    return tau if tau == tau else None  # nan when every accuracy (or score) ties


def evaluate_target(rows: list[dict]) -> tuple[dict, int]:
    """Per score on one target: weighted tau (over the candidates with the score, and over all with n/a
    last), top-1 hit (the score's best candidate is the best after fine-tuning; n/a ranks last)."""
    truth = [r["accuracy"] for r in rows]
    best = max(range(len(rows)), key=lambda i: truth[i])
    evaluation = {}
    for s in SCORES:
        values = [r["scores"].get(s) for r in rows]
        defined = [i for i, v in enumerate(values) if v is not None]
        top = max(defined, key=lambda i: values[i]) if defined else None
        evaluation[s] = {
            "tau": weighted_tau(values, truth, na_last=True),
            "tau_defined": weighted_tau(values, truth),
            "top1_hit": top == best,
            "n": len(defined),
        }
    return evaluation, best


def summarize_scores(per_target: dict, targets) -> dict:
    out = {}
    for s in SCORES:
        per = [per_target[t]["scores"][s] for t in targets]
        taus = [e["tau"] for e in per if e["tau"] is not None]
        defined = [e["tau_defined"] for e in per if e["tau_defined"] is not None]
        out[s] = {
            "mean_tau": statistics.fmean(taus) if taus else None,
            "mean_tau_defined": statistics.fmean(defined) if defined else None,
            "taus": [e["tau"] for e in per],
            "top1_hit_rate": sum(e["top1_hit"] for e in per) / len(per),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "outputs", "rank_backbones"))
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "outputs", "benchmarks", "rank_backbones.md"),
        help="markdown table (and .json beside it); the committed one: benchmarks/results/rank_backbones.md",
    )
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps of each ground-truth run (100)")
    parser.add_argument("--rank_images", type=int, default=600, help="train images the ranking scores (600)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 candidates, 3 steps, 2 targets")
    parser.add_argument(
        "--from_json", default=None, help="no training: recompute the statistics and the report from a saved .json"
    )
    opts = parser.parse_args(argv)
    set_run_options(opts)
    if opts.from_json:
        return _rewrite(opts.from_json, opts.out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hf_transfer.cli.rank import _parser as rank_parser
    from hf_transfer.selection.rank import rank_backbones

    zoo, targets, steps_scale = ZOO, DOMAINS, 1.0
    if opts.quick:
        zoo, targets, steps_scale, opts.steps = ZOO[:3] + ZOO[5:6], DOMAINS[:2], 0.02, 3
    start_all = time.time()
    load = os.getloadavg()
    pre_dir = os.path.join(opts.work_dir, "pretrained")
    paths, pretrain = {}, {}
    for name, arch, source, steps in zoo:
        if source is None:
            paths[name] = arch
            continue
        out = os.path.join(pre_dir, name)
        t = time.time()
        res = train({**COMMON, "backbone": arch, "target": f"builtin:{source}", "output_dir": out,
                     "max_steps": max(1, int(steps * steps_scale))})  # fmt: skip
        pretrain[name] = {"seconds": time.time() - t, "source_accuracy": res["metrics"]["target"]["accuracy"]}
        paths[name] = out
        print(f"[bench] pretrained {name}: source acc {pretrain[name]['source_accuracy']:.3f} "
              f"({pretrain[name]['seconds']:.0f} s)", flush=True)  # fmt: skip

    per_target = {}
    cache_dir = os.path.join(opts.work_dir, "feature_cache")
    for target in targets:
        cands = _zoo_for(target, zoo)
        shutil.rmtree(cache_dir, ignore_errors=True)  # every ranking extracts its features (no cache hits)
        rank_out = os.path.join(opts.work_dir, "rank", target)
        argv_rank = ["--target", f"builtin:{target}", "--backbones", *[paths[c[0]] for c in cands]]
        argv_rank += ["--image_size", "32", "--crop_pct", "1.0", "--max_train_samples", str(opts.rank_images)]
        argv_rank += ["--output_dir", rank_out, "--feature_cache_dir", cache_dir, "--seed", "0"]
        t = time.time()
        ranking = rank_backbones(rank_parser().parse_args(argv_rank))
        rank_seconds = time.time() - t
        by_path = {c["backbone"]: c for c in ranking["candidates"]}
        rows = []
        ft_seconds = 0.0
        for name, _arch, source, _steps in cands:
            out = os.path.join(opts.work_dir, "finetune", target, name)
            t = time.time()
            res = train({**COMMON, "backbone": paths[name], "target": f"builtin:{target}", "output_dir": out,
                         "max_steps": opts.steps, "backbone_lr_scale": 0.1})  # fmt: skip
            seconds = time.time() - t
            ft_seconds += seconds
            acc = res["metrics"]["target"]["accuracy"]
            rows.append({"name": name, "source": source, "accuracy": acc, "finetune_seconds": seconds,
                         "scores": by_path[paths[name]]["scores"]})  # fmt: skip
            print(f"[bench] {target} <- {name}: fine-tuned acc {acc:.3f} ({seconds:.0f} s)", flush=True)
        evaluation, best = evaluate_target(rows)
        per_target[target] = {
            "candidates": rows,
            "best": rows[best]["name"],
            "rank_seconds": rank_seconds,
            "rank_scoring_seconds": ranking["seconds"],
            "finetune_seconds": ft_seconds,
            "scores": evaluation,
        }
        print(f"[bench] {target}: rank {rank_seconds:.1f} s, fine-tune all {ft_seconds:.0f} s; "
              + ", ".join(f"{s} tau {e['tau']}" for s, e in evaluation.items()), flush=True)  # fmt: skip

    rank_total = sum(p["rank_seconds"] for p in per_target.values())
    ft_total = sum(p["finetune_seconds"] for p in per_target.values())
    summary = {
        "zoo": [{"name": n, "architecture": a, "source": s, "pretrain_steps": st} for n, a, s, st in zoo],
        "pretrain": pretrain,
        "targets": list(targets),
        "steps": opts.steps,
        "rank_images": opts.rank_images,
        "per_target": per_target,
        "scores": summarize_scores(per_target, targets),
        "rank_seconds": rank_total,
        "finetune_seconds": ft_total,
        "cost_ratio": rank_total / ft_total,
        "total_seconds": time.time() - start_all,
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": "python benchmarks/rank_backbones.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    }
    _write(summary, opts.out)
    return 0


def _rewrite(path: str, out: str) -> int:
    """The statistics and the report of a saved run, recomputed from its accuracies and scores."""
    with open(path) as f:
        summary = json.load(f)
    for p in summary["per_target"].values():
        p["scores"], _ = evaluate_target(p["candidates"])
    summary["scores"] = summarize_scores(summary["per_target"], summary["targets"])
    summary["statistics_from"] = f"python benchmarks/rank_backbones.py --from_json {path} --out {out}"
    _write(summary, out)
    return 0


def _write(summary: dict, out: str) -> None:
    markdown = format_report(summary)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(markdown + "\n")
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    print(markdown)


def _f(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def format_report(s: dict) -> str:
    targets = s["targets"]
    lines = [
        "# Backbone ranking on a zoo built offline",
        "",
        f"Command: `OMP_NUM_THREADS=1 {s['command']}` ({s['machine']}; total {s['total_seconds'] / 60:.1f} min; "
        f"load average at start {s['load_average_at_start'][0]}, at end {s['load_average_at_end'][0]}: the "
        "machine is shared with other jobs, times are as measured)."
        + (
            f" Statistics recomputed from the saved numbers: `{s['statistics_from']}`."
            if "statistics_from" in s
            else ""
        ),
        "",
        f"Zoo ({len(s['zoo'])} candidates): timm architectures pretrained by this project's task mode (full "
        "fine-tuning, SGD lr 0.05, cosine, batch 64, light augmentation, 32 px) on a built-in source for the "
        "given steps, plus random init. "
        f"Ground truth: target test accuracy after fine-tuning each candidate {s['steps']} steps (task mode, full, "
        "backbone lr x0.1, one seed, max 500 test images). A target's zoo leaves out the checkpoints pretrained on "
        f"that target. Ranking: `hf-transfer rank` on {s['rank_images']} train images of the target, fresh feature "
        "cache. LEEP/NCE are n/a for random init: their tau is over all candidates with n/a ranked last (tied), "
        "as `hf-transfer rank` orders them; the last column gives their tau over the pretrained candidates only "
        "(fewer, easier pairs: not comparable with the others). Top-1: n/a counts as last.",
        "",
        "| candidate | architecture | pretrained on | steps | source acc | " + " | ".join(targets) + " |",
        "|---|---|---|---|---|" + "---|" * len(targets),
    ]
    acc = {t: {r["name"]: r["accuracy"] for r in s["per_target"][t]["candidates"]} for t in targets}
    for z in s["zoo"]:
        pre = s["pretrain"].get(z["name"], {})
        cells = [_f(acc[t].get(z["name"]), "{:.3f}") if z["source"] != t else "(own source)" for t in targets]
        lines.append(
            f"| {z['name']} | {z['architecture']} | {z['source'] or 'random init'} | {z['pretrain_steps']} | "
            f"{_f(pre.get('source_accuracy'))} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Per score: weighted Kendall tau against the fine-tuned accuracy (per target and mean) and top-1 hit rate.",
        "",
        "| score | " + " | ".join(f"tau {t}" for t in targets) + " | mean tau | top-1 hits | mean tau, defined only |",
        "|---|" + "---|" * len(targets) + "---|---|---|",
    ]
    for name, e in sorted(s["scores"].items(), key=lambda kv: -(kv[1]["mean_tau"] or -9)):
        lines.append(
            f"| {name} | " + " | ".join(_f(t) for t in e["taus"]) + f" | {_f(e['mean_tau'])} | "
            f"{e['top1_hit_rate'] * len(targets):.0f}/{len(targets)} | {_f(e.get('mean_tau_defined'))} |"
        )
    lines += [
        "",
        "| target | best after fine-tuning | candidates | rank all (s) | fine-tune all (s) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        p = s["per_target"][t]
        lines.append(
            f"| {t} | {p['best']} | {len(p['candidates'])} | {p['rank_seconds']:.1f} | {p['finetune_seconds']:.0f} | "
            f"1/{p['finetune_seconds'] / p['rank_seconds']:.0f} |"
        )
    best = max(s["scores"].items(), key=lambda kv: kv[1]["mean_tau"] or -9)
    no_na = {k: v for k, v in s["scores"].items() if v.get("mean_tau_defined") == v["mean_tau"]}
    feat = max(no_na.items(), key=lambda kv: kv[1]["mean_tau"] or -9)
    ratio = s["cost_ratio"]
    lines += [
        f"| all | | | {s['rank_seconds']:.1f} | {s['finetune_seconds']:.0f} | 1/{1 / ratio:.0f} |",
        "",
        f"Targets: best mean weighted tau >= 0.7: **{'met' if best[1]['mean_tau'] >= 0.7 else 'not met'}** "
        f"(best: {best[0]}, {best[1]['mean_tau']:.3f}, over every candidate); ranking <= 1/20 of fine-tuning all: "
        f"**{'met' if ratio <= 1 / 20 else 'not met'}** (1/{1 / ratio:.1f}). Rank times include loading the target "
        "and every candidate; fine-tune times are each run_transfer call (training, evaluation, export), "
        "both in one process (imports not counted).",
        "",
        f"Of the scores computed from the features alone (no n/a), the best mean tau is {feat[0]}'s "
        f"({feat[1]['mean_tau']:.3f}: {'>=' if feat[1]['mean_tau'] >= 0.7 else 'under'} 0.7). LEEP/NCE's n/a marks "
        "exactly the random-init candidates, and random init fine-tunes worse than most pretrained ones here, so "
        "ranking n/a last is itself information the feature-only scores do not get. One seed, "
        f"{s['steps']} fine-tuning steps and at most 500 test images per run: the ground truth is noisy, most on "
        "the target where every candidate stays far from converged (see the accuracies above).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
