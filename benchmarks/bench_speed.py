"""Speed benchmark: the stock recipe vs hf_transfer, side by side in ONE process run.

    python benchmarks/bench_speed.py --wait_idle 300 --out benchmarks/results/speed_cpu.json   # CPU, idle machine
    python benchmarks/bench_speed.py --out speed_h200.json                                      # on a GPU

Three kinds of case (``--cases``, comma list of ``<kind>:<timm architecture>@<input size>:<data>``):

``finetune``
    stock = the plain recipe a user writes with the stock libraries: ``datasets`` Image column +
    per-sample torchvision PIL transforms (RandomResizedCrop + flip + ToTensor + Normalize) in
    ``set_transform`` + a plain ``transformers.Trainer`` around ``timm.create_model`` (logits + CE
    loss; bf16 on CUDA, nothing else). ours = :func:`hf_transfer.training.run.prepare_run` in task mode
    (``input_path=fast``: uint8 decoded cache + batched crop/flip/normalise inside the model's
    forward) + ``trainer.train()``, with bf16 / channels_last / ``torch.compile`` per device
    (``--bf16/--compile auto``: on for CUDA, off on the CPU; ``--channels_last auto``: as shipped, on for
    a convolutional backbone on CUDA and the CPU; the options column gives what each arm resolved). Same
    architecture (random init), batch size, steps, optimizer (the Trainer's default AdamW) and
    learning rate. Loader workers: the stock arms get ``--workers`` (their PIL work needs them);
    ours gets ``--ours_workers``: on the CPU 0 by default, which is hf_transfer's default
    (``dataloader_num_workers=0``) and its fastest setting there (its loader only gathers uint8 rows, ~1 ms
    per batch in-process; workers add a hand-off through shared memory, a stall at every epoch start and
    compete with the model for the cores); ours also runs at ``--workers`` (``ours_same_workers``, shown
    beside it), so the table shows both. img/s is steady state: the clock starts after
    ``--warmup`` steps (compilation, worker start-up) and stops at the last step; the one-time
    setup (building the model, the Trainer, and for ours the decode of the train + test images)
    is reported apart, with the decode time on its own.
``probe`` (the 10-epoch linear probe)
    naive = the same stock recipe with every parameter but the classifier frozen, for
    ``--probe_epochs`` epochs (images -> backbone -> head every epoch), as the anchor's
    ``frozen`` section. ours = feature mode as shipped (one extraction pass over train + test through the
    fast input path, decoded in-process threads, features streamed to a memory-mapped cache), with the
    head trained by the Trainer for the same epochs (``ours``, ``head_solver=sgd``, the default) or by one
    full-batch L-BFGS solve (``ours_lbfgs``, ``head_solver=lbfgs``). Total wall time, setup included, for
    every arm (setup = data subset + model + Trainer; for ours everything ``prepare_run`` does, extraction
    included, caches cold in every pass); then each arm's test accuracy (untimed), so a faster probe
    cannot hide a worse one.
``extract`` (one inference pass for feature caching)
    stock = the anchor's ``extract`` section (stock eval transforms in ``set_transform``, a
    DataLoader with ``--workers`` workers, ``timm`` model without head, bf16 autocast on CUDA);
    ours = ``extract_features(input_path="fast")`` cold (decode into the uint8 cache included)
    and warm (decoded cache present); also ``extract_features(input_path="stock")`` as feature
    mode calls it today (no loader workers).

Threads: every arm says how many intra-op threads it ran with. The stock arms run twice per pass: with
torch's default (all cores: what a user of the stock recipe gets) and, on the CPU, with ``cores - workers``
(a core left to each PIL loader worker); the faster of the two is the anchor of the ratio. Ours runs as
shipped (``cpu_threads=auto``: ``OMP_NUM_THREADS`` if set, else the cores, since its loader workers only copy
uint8 rows). Setting ``OMP_NUM_THREADS`` pins every arm to that many threads.

Repeats: ``--repeats`` passes (default 3), each running every arm once in the same order; tables give the
median of each arm (the pass nearest it for the other numbers) and the range, and the ratio is the median
of the per-pass ratios, with their range.

Load: the machine's load average before and after, and the cores OTHER processes kept busy during the
run (``_load.py``); a run whose start load or foreign load exceeded 0.5 per core is marked "busy: not
for the README" in its header. ``--wait_idle S`` waits up to S seconds for an idle machine first.

Data: ``digits`` = the built-in ``digits-printed`` domain (32x32 PNGs); ``jpeg`` = synthetic
320x256 JPEGs made like the anchors' (``one_jpeg`` of the anchor script, ``--num_jpegs`` of them +
1/8 as many for a test split), saved with ``save_to_disk`` in a temporary folder and given to
hf_transfer as a local dataset path; the stock arms read the very same rows (same seeded subset).

Memory: per arm, the main process's peak RSS (the high-water mark is reset through
/proc/self/clear_refs on Linux) and the loader workers' PSS (proportional set size: forked workers
share the parent's pages, which RSS would count once per worker; read at the last step), and on
CUDA ``torch.cuda.max_memory_allocated`` (reset per arm); the whole run's ``resource.getrusage``
peaks at the end. Prints markdown tables; ``--out X.json`` writes the JSON and ``X.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _load import LoadMonitor, wait_until_idle  # noqa: E402
from speed_arms import (  # noqa: E402
    CROP_PCT,
    ours_extract,
    ours_finetune_arm,
    ours_probe_arm,
    stock_extract,
    stock_trainer_arm,
)
from speed_data import Data  # noqa: E402
from speed_report import environment, header, markdown, summary  # noqa: E402

CPU_CASES = (
    "finetune:test_resnet@64:digits,finetune:test_resnet@64:jpeg,finetune:test_vit@160:jpeg,"
    "probe:test_resnet@64:digits,probe:test_resnet@64:jpeg,"
    "extract:test_resnet@64:digits,extract:test_resnet@64:jpeg"
)
CUDA_CASES = (
    "finetune:vit_base_patch16_224@224:jpeg,finetune:resnet50@224:jpeg,"
    "probe:vit_base_patch16_224@224:jpeg,extract:vit_base_patch16_224@224:jpeg"
)


# ------------------------------------------------------------------------------------------
# cases


def _arm(fn) -> dict:
    """Run one arm; an exception becomes ``{"error": ...}`` so the other arm's numbers survive."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a benchmark reports what failed and goes on
        import traceback

        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e)[:400]}"}


def _ratio(a, b):
    return round(a / b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def stock_threads(args, device) -> dict[str, int]:
    """The stock arms' thread settings: torch's default (what a user of the stock recipe gets) and, on the CPU
    with loader workers, ``cores - workers`` (one core left to each PIL worker). The faster one is the anchor,
    so ours is compared with the stock recipe at its best thread setting, not at a bad one."""
    configs = {"stock": args.default_threads}
    if device.type == "cpu" and args.workers > 0:
        tuned = max(1, (os.cpu_count() or 1) - args.workers)
        if tuned != args.default_threads:
            configs[f"stock_{tuned}t"] = tuned
    return configs


def interleaved(args, arms: dict) -> dict[str, list[dict]]:
    """Every arm once per pass, always in the same order, ``--repeats`` passes: the arms of one pass share the
    machine's state, and the per-pass ratios give the spread."""
    passes: dict[str, list[dict]] = {name: [] for name in arms}
    for _ in range(max(1, args.repeats)):
        for name, fn in arms.items():
            passes[name].append(_arm(fn))
    return passes


def summarise(runs: list[dict], key: str) -> dict:
    """The pass nearest the median of ``key`` (its other numbers with it), the median itself, every pass's
    value (``all_<key>``) and their range (``spread``)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    values = [r[key] for r in ok]
    median = statistics.median(values)
    out = dict(min(ok, key=lambda r: abs(r[key] - median)))
    out[key] = round(median, 2)
    out["all_" + key] = values
    out["spread"] = [min(values), max(values)]
    if "decode_s" in ok[0]:  # the one-time decode happens in the first pass (later ones hit the cache)
        out["decode_s"], out["decoded_splits"] = ok[0]["decode_s"], ok[0]["decoded_splits"]
    return out


def ratios(passes: dict, ours: str, anchors: list[str], key: str, higher: bool) -> dict:
    """Per-pass ratio of ``ours`` to the best anchor arm of the same pass; their median and range."""
    per_pass = []
    for i, mine in enumerate(passes[ours]):
        base = [passes[a][i][key] for a in anchors if "error" not in passes[a][i]]
        if "error" in mine or not base:
            continue
        per_pass.append(_ratio(mine[key], max(base)) if higher else _ratio(min(base), mine[key]))
    if not per_pass:
        return {"ratio": None}
    return {
        "ratio": round(statistics.median(per_pass), 2),
        "ratio_all": per_pass,
        "ratio_range": [min(per_pass), max(per_pass)],
    }


def case_finetune(args, device, data, arch, size, dname) -> dict:
    n = args.train_images
    arms = {
        name: (
            lambda t=threads: stock_trainer_arm(
                args, device, data, arch, size, dname, n, freeze=False, epochs=None, threads=t
            )
        )
        for name, threads in stock_threads(args, device).items()
    }
    arms["ours"] = lambda: ours_finetune_arm(args, device, data, arch, size, dname, n, args.ours_workers)
    if args.ours_workers != args.workers:  # ours also at the stock arms' worker count, shown beside it
        arms["ours_same_workers"] = lambda: ours_finetune_arm(args, device, data, arch, size, dname, n, args.workers)
    passes = interleaved(args, arms)
    if args.compile and all("error" in r for r in passes["ours"]):  # one-shot GPU runs: still measure ours, eager
        failed = passes["ours"][0]["error"]
        args.compile = False
        try:
            passes["ours"] = [_arm(arms["ours"]) for _ in range(max(1, args.repeats))]
        finally:
            args.compile = True
        for r in passes["ours"]:
            r["compile_error"] = failed
    anchors = [a for a in arms if not a.startswith("ours")]
    out = {name: summarise(runs, "img_per_s") for name, runs in passes.items()}
    out["anchor"] = max(anchors, key=lambda a: out[a].get("img_per_s") or 0)
    out.update(ratios(passes, "ours", anchors, "img_per_s", higher=True))
    if "ours_same_workers" in passes:
        same = ratios(passes, "ours_same_workers", anchors, "img_per_s", higher=True)
        out.update(  # named so that the report's ratio cell finds "<prefix>_range"
            ratio_same_workers=same["ratio"],
            ratio_all_same_workers=same.get("ratio_all"),
            ratio_same_workers_range=same.get("ratio_range"),
        )
    return out


def case_probe(args, device, data, arch, size, dname) -> dict:
    n = args.probe_images
    arms = {
        f"naive{name[5:]}": (
            lambda t=threads: stock_trainer_arm(
                args, device, data, arch, size, dname, n, freeze=True, epochs=args.probe_epochs, threads=t
            )
        )
        for name, threads in stock_threads(args, device).items()
    }
    arms["ours"] = lambda: ours_probe_arm(args, device, data, arch, size, dname, n, "sgd")
    arms["ours_lbfgs"] = lambda: ours_probe_arm(args, device, data, arch, size, dname, n, "lbfgs")
    passes = interleaved(args, arms)
    for runs in passes.values():
        for r in runs:
            if "error" not in r and "setup_s" in r and "total_s" not in r:
                r["total_s"] = round(r["setup_s"] + r["train_s"], 2)
            if "error" not in r and "train_s" in r and "head_train_s" not in r:
                r["img_per_s_per_epoch"] = round(r["images"] * args.probe_epochs / r["train_s"], 1)
    anchors = [a for a in arms if a.startswith("naive")]
    out = {name: summarise(runs, "total_s") for name, runs in passes.items()}
    out["anchor"] = min(anchors, key=lambda a: out[a].get("total_s") or float("inf"))
    out["epochs"] = args.probe_epochs
    out.update(ratios(passes, "ours", anchors, "total_s", higher=False))
    lbfgs = ratios(passes, "ours_lbfgs", anchors, "total_s", higher=False)
    out.update({k.replace("ratio", "ratio_lbfgs"): v for k, v in lbfgs.items()})
    return out


def case_extract(args, device, data, arch, size, dname) -> dict:
    from hf_transfer.models.backbones import load_backbone

    ds = data.train(dname, args.extract_images)
    k = data.num_classes(dname)
    torch.set_num_threads(args.default_threads)  # both arms at the default: this case is about the input path
    stock = _arm(lambda: stock_extract(args, device, ds, arch, k, size))
    torch.manual_seed(args.seed)
    backbone = load_backbone(arch, [str(i) for i in range(k)], image_size=size, crop_pct=CROP_PCT)
    backbone.model.to(device)  # as the stock arm: the model is on the device before the clock starts
    cache = tempfile.mkdtemp(prefix="decoded_", dir=data.work)
    cold = _arm(lambda: ours_extract(args, device, ds, backbone, cache, "fast", args.workers))
    warm = _arm(lambda: ours_extract(args, device, ds, backbone, cache, "fast", args.workers))
    shipped = _arm(lambda: ours_extract(args, device, ds, backbone, cache, "stock", 0))
    shutil.rmtree(cache, ignore_errors=True)
    base = stock.get("img_per_s_end_to_end")
    return {
        "stock": stock,
        "ours_cold": cold,
        "ours_warm": warm,
        "ours_stock_path": shipped,
        "images": len(ds),
        "ratio_cold": _ratio(cold.get("img_per_s_end_to_end"), base),
        "ratio_warm": _ratio(warm.get("img_per_s_end_to_end"), base),
    }


CASES = {"finetune": case_finetune, "probe": case_probe, "extract": case_extract}


# ------------------------------------------------------------------------------------------
# command line


def _auto(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "on"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument(
        "--cases",
        default=None,
        help=f"comma list of kind:arch@px:data (CPU default {CPU_CASES!r}; CUDA default {CUDA_CASES!r})",
    )
    p.add_argument("--steps", type=int, default=None, help="timed training steps (CPU 60, CUDA 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (CPU 5, CUDA 10)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=None, help="CPU 32, CUDA 128")
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers, both arms (CPU 2, CUDA min(14, cpus - 2))"
    )
    p.add_argument(
        "--ours_workers",
        "--ours-workers",
        type=int,
        default=None,
        help="ours' DataLoader workers (CPU 0: hf_transfer's default, the fastest there; CUDA: --workers); "
        "when it differs from --workers, ours also runs at --workers, shown beside it",
    )
    p.add_argument(
        "--num_jpegs", "--num-jpegs", type=int, default=None, help="synthetic train JPEGs (CPU 384, CUDA 8192)"
    )
    p.add_argument(
        "--train_images",
        "--train-images",
        type=int,
        default=None,
        help="fine-tuning: at most this many training images (CPU 2048, CUDA all)",
    )
    p.add_argument(
        "--probe_images",
        "--probe-images",
        type=int,
        default=None,
        help="linear probe train images (CPU 1024, CUDA 8192)",
    )
    p.add_argument("--probe_epochs", "--probe-epochs", type=int, default=10)
    p.add_argument(
        "--eval_images",
        "--eval-images",
        type=int,
        default=None,
        help="test images ours decodes / extracts at setup (CPU 256, CUDA 1024)",
    )
    p.add_argument("--extract_images", "--extract-images", type=int, default=None, help="CPU 1024, CUDA 8192")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    p.add_argument(
        "--channels_last",
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="ours only; auto (as shipped): on for a convolutional backbone on CUDA and the CPU",
    )
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="ours only; auto: on for CUDA")
    p.add_argument(
        "--repeats", type=int, default=3, help="passes; every arm once per pass, interleaved; medians and ranges"
    )
    p.add_argument(
        "--wait_idle",
        "--wait-idle",
        type=float,
        default=0,
        help="wait up to this many seconds for the load average to fall to 0.5 per core before starting",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen_processes", type=int, default=None, help="processes generating JPEGs")
    p.add_argument("--out", default=None, help="write JSON here and the markdown tables next to it (.md)")
    args = p.parse_args(argv)
    args.default_threads = torch.get_num_threads()  # before any arm changes it (ours sets its own)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    cpus = os.cpu_count() or 2
    defaults = {
        "cases": CUDA_CASES if cuda else CPU_CASES,
        "train_images": None if cuda else 2048,
        "steps": 50 if cuda else 60,
        "warmup": 10 if cuda else 5,
        "batch_size": 128 if cuda else 32,
        "workers": min(14, max(1, cpus - 2)) if cuda else 2,
        "num_jpegs": 8192 if cuda else 384,
        "probe_images": 8192 if cuda else 1024,
        "eval_images": 1024 if cuda else 256,
        "extract_images": 8192 if cuda else 1024,
        "gen_processes": min(cpus, 16),
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.ours_workers is None:
        args.ours_workers = args.workers if cuda else 0
    args.bf16 = _auto(args.bf16, cuda)
    args.channels_last = {"on": "true", "off": "false"}.get(args.channels_last, "auto")  # ours resolves auto
    args.compile = _auto(args.compile, cuda)
    if args.bf16 and not cuda:
        raise SystemExit("--bf16 on needs CUDA here (the Trainer's bf16 on CPU is not what the anchors measured)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    waited = wait_until_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
    import transformers

    transformers.logging.set_verbosity_error()
    env = environment(device)
    print(
        f"# speed benchmark on {env['gpu'] or 'cpu'} ({env['cpu_count']} CPUs, torch {env['torch']}, "
        f"transformers {env['transformers']}, timm {env['timm']}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']})",
        flush=True,
    )
    work = tempfile.mkdtemp(prefix="hf_transfer_bench_speed_")
    data = Data(args, work)
    rows: list[dict] = []
    t_start = time.perf_counter()
    monitor = LoadMonitor().__enter__()
    try:
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            try:
                kind, rest, dname = case.split(":")
                arch, size = rest.split("@")
                size = int(size)
            except ValueError:
                raise SystemExit(f"bad case {case!r}: expected kind:arch@px:data") from None
            if kind not in CASES:
                raise SystemExit(f"unknown case kind {kind!r} (choose from {sorted(CASES)})")
            row = {"kind": kind, "model": arch, "size": size, "data": dname}
            t = time.perf_counter()
            try:
                row.update(CASES[kind](args, device, data, arch, size, dname))
            except Exception as e:  # noqa: BLE001 - one failed case must not lose the others
                import traceback

                traceback.print_exc()
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            row["case_s"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(f"{case}: {summary(row)} [{row['case_s']} s]", flush=True)
    finally:
        monitor.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
    env["load"] = {**monitor.report(), "waited_for_idle_s": waited}
    env["loadavg_end"] = env["load"]["loadavg_end"]
    print(f"machine load: {env['load']}", flush=True)
    table = markdown(rows, args)
    head = header(env, args, data.notes, time.perf_counter() - t_start)
    usage = {
        "ru_maxrss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "ru_maxrss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    print()
    print(table)
    print(
        f"whole run: {round(time.perf_counter() - t_start, 1)} s; peak RSS (getrusage) self "
        f"{usage['ru_maxrss_self_mb']} MB, largest child {usage['ru_maxrss_children_mb']} MB"
    )
    result = {
        "env": env,
        "args": vars(args),
        "data": data.notes,
        "rows": rows,
        "rusage": usage,
        "total_s": round(time.perf_counter() - t_start, 1),
        "markdown": table,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        md = os.path.splitext(args.out)[0] + ".md"
        with open(md, "w") as f:
            f.write(head + "\n" + table + "\n")
        print(f"wrote {args.out} and {md}")
    return result


if __name__ == "__main__":
    main()
