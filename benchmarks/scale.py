"""Scale benchmark: what the input pipeline costs per image as a local dataset grows (1k, 10k, 50k images).

    nice python benchmarks/scale.py --sizes 1000 10000 50000 [--skip 50000:feature 50000:feature-fp16]
        [--out benchmarks/results/scale.json --md benchmarks/results/scale.md]

Data: synthetic photo-like 320x256 JPEGs (smooth colour fields, a disk, noise; 10 classes), written as a local
parquet folder (``train-*.parquet`` shards of 1000 rows + ``test-*.parquet`` shards of 10%), generated once per size
under ``--work`` (default ``outputs/benchmarks/scale``). At most :data:`DISTINCT_IMAGES` distinct JPEG files are
drawn; larger sets reuse those byte strings in turn (row k gets file k mod 1000 and label k mod 10), so 50k images
are written in seconds rather than minutes of drawing and encoding. Every row is still read, checked and decoded on
its own: the pipeline's cost per image is that of distinct images. Each case runs in a fresh process (its peak RSS
is its own, ``resource.getrusage``), with its own empty caches (``HF_TRANSFER_CACHE``, ``HF_DATASETS_CACHE``), so
every number is a cold start:

* ``decode-raw`` / ``decode-jpeg``: load the folder (datasets' parquet -> Arrow conversion and the unreadable-image
  check of every image, as a run does), then decode the train split once into the fast path's cache
  (``DecodedImages``, train storage 256x320, ``--decode_cache_format raw`` / ``jpeg`` q90), then one pass of a
  DataLoader over it (batch 64, main process: the read, plus the JPEG decode for ``jpeg``).
* ``task-raw`` / ``task-jpeg``: a whole ``hf-transfer train --mode task`` run (test_resnet, 224 px, batch 32,
  ``--max_steps`` 20, eval on the test split) in the same process layout as the CLI: time to the first training
  step from the start of the run (loading, checks, decoding all included) and the training time per image.
* ``stream``: the same task run with ``--streaming true`` over the parquet folder: the train split is read as a
  stream, decoded batch by batch in the loader (nothing is converted, checked or decoded ahead of the first step);
  the test split is still loaded, checked and decoded into the eval cache before training, as a streaming run does.
* ``feature`` / ``feature-fp16``: a whole ``--mode feature`` run (same backbone; features extracted once for the
  train and test splits, a linear head trained 20 steps): time to the first step (the extraction is all of it)
  and the feature cache's bytes per image, float32 and ``--feature_dtype float16``.

Every run trains a fixed :data:`STEPS` steps of :data:`BATCH` images, whatever the data size: its training cost per
image can only grow through what really grows with the data (loading, the decode or feature cache, the test split).
Disk per image: the bytes of each cache (datasets' Arrow copy, the decoded images, the features) divided by the
images in it. ``--skip SIZE:CASE`` leaves a case out at one size (e.g. the feature cases at 50k: their extraction
takes about 30 ms per image on a 2-core CPU). The machine this was run on is recorded with the numbers (a shared
2-core CPU gives long and noisy times: read the ratios).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("decode-raw", "decode-jpeg", "task-raw", "task-jpeg", "stream", "feature", "feature-fp16")
SHARD_ROWS = 1000
#: distinct JPEG files drawn per dataset; larger sets reuse them in turn (see the module doc)
DISTINCT_IMAGES = 1000
#: every run trains this many steps of this many images, whatever the data size
STEPS, BATCH = 20, 32
#: what the flatness line compares (per case: cost per image and peak RSS, largest size over smallest)
FLAT_WITHIN = 1.15
#: the streaming case's target: its first training step within this many seconds at the largest size
STREAM_FIRST_STEP_S = 30.0


def _draw_jpeg(rng, yy, xx, height: int, width: int) -> bytes:
    """One photo-like JPEG (q90): a smooth colour field, a disk, noise."""
    import numpy as np
    from PIL import Image

    low = rng.random((3, 5, 6)).astype(np.float32)
    field = np.stack(
        [np.asarray(Image.fromarray((c * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)) for c in low],
        axis=-1,
    ).astype(np.float32)
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
    field[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] += rng.uniform(-80, 80, 3)
    field += rng.normal(0, 6, field.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(n: int, folder: str, seed: int = 0) -> None:
    """``n`` train + ``n // 10`` test 320x256 JPEGs as parquet shards of :data:`SHARD_ROWS` rows.

    At most :data:`DISTINCT_IMAGES` files are drawn; the rows take them in turn (the test rows after the train
    rows), with label ``row mod 10``."""
    import datasets
    import numpy as np

    if os.path.exists(os.path.join(folder, "done")):
        return
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = 256, 320
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    files = [_draw_jpeg(rng, yy, xx, height, width) for _ in range(min(DISTINCT_IMAGES, n))]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)])}
    )
    first_row = {"train": 0, "test": n}
    for split, rows in (("train", n), ("test", max(n // 10, 10))):
        shards = -(-rows // SHARD_ROWS)
        for s in range(shards):
            ks = range(s * SHARD_ROWS, min(rows, (s + 1) * SHARD_ROWS))
            cells = [{"bytes": files[(first_row[split] + k) % len(files)], "path": None} for k in ks]
            ds = datasets.Dataset.from_dict({"image": cells, "label": [k % 10 for k in ks]}, features=features)
            # datasets writes image bytes PLAIN, uncompressed: a reused file is stored whole in every row
            ds.to_parquet(os.path.join(folder, f"{split}-{s:05d}-of-{shards:05d}.parquet"))
    open(os.path.join(folder, "done"), "w").close()


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) if path else 0


def _run_args(case: str, data: str, out: str) -> dict:
    args = {
        "backbone": "test_resnet",
        "target": data,
        "image_size": 224,
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": 128,
        "max_steps": STEPS,
        "learning_rate": 0.05,
        "optim": "sgd",
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 10,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        "output_dir": out,
    }
    if case.startswith("task"):
        args.update(mode="task", decode_cache_format=case.split("-")[1])
    elif case == "stream":
        args.update(mode="task", streaming=True)
    else:
        args.update(mode="feature", feature_dtype="float16" if case.endswith("fp16") else "float32")
    return args


def run_case(case: str, data: str, work: str) -> dict:
    """One case in this (fresh) process; returns its measurements."""
    start = time.perf_counter()
    import torch
    from transformers import TrainerCallback

    from hf_transfer.config import arguments_from_dict

    result: dict = {"case": case}
    if case.startswith("decode"):
        from hf_transfer.data.decoded import DecodedImages, collate_decoded
        from hf_transfer.data.load import load_domain
        from hf_transfer.data.spec import parse_dataset_spec
        from hf_transfer.data.transforms import DataConfig

        t = time.perf_counter()
        train = load_domain(parse_dataset_spec(data), None, None, seed=0)["train"]
        result["load_s"] = time.perf_counter() - t
        n = len(train)
        cfg = DataConfig(input_size=(3, 224, 224), crop_pct=0.875)
        t = time.perf_counter()
        images = DecodedImages(train, cfg, "train", progress=False, storage_format=case.split("-")[1])
        result["decode_s_per_image"] = (time.perf_counter() - t) / n
        loader = torch.utils.data.DataLoader(images, batch_size=64, collate_fn=collate_decoded)
        t = time.perf_counter()
        for _ in loader:
            pass
        result["read_pass_s_per_image"] = (time.perf_counter() - t) / n
        result.update(images=n, cache_bytes_per_image=images.stored_bytes / n, storage_hw=list(images.storage_hw))
    else:
        from hf_transfer.training.run import run_transfer

        step_ends: list[float] = []

        class StepTimes(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                step_ends.append(time.perf_counter())

        t = time.perf_counter()
        results = run_transfer(*arguments_from_dict(_run_args(case, data, os.path.join(work, "run"))), [StepTimes()])
        result["time_to_first_step_s"] = step_ends[0] - t
        # steps 2..STEPS: the steady training cost (the first step pays the lazy starts)
        result["train_s_per_image"] = (step_ends[-1] - step_ends[0]) / ((len(step_ends) - 1) * BATCH)
        result["steps"] = len(step_ends)
        result["target_accuracy"] = results["metrics"]["target"]["accuracy"]
        result["jpeg_decoder"] = results["speed"].get("jpeg_decoder")
        if results.get("streaming"):
            result["streaming"] = results["streaming"]
    caches = {
        "datasets_arrow": os.environ["HF_DATASETS_CACHE"],
        "decoded": os.path.join(os.environ["HF_TRANSFER_CACHE"], "decoded"),
        "features": os.path.join(os.environ["HF_TRANSFER_CACHE"], "features"),
    }
    result["cache_bytes"] = {k: _tree_bytes(v) for k, v in caches.items() if os.path.isdir(v)}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.update(_rss_split())
    result["wall_s"] = time.perf_counter() - start
    return result


def _per_image_cost(r: dict) -> float | None:
    """A case's cost per image: the one-time decode for ``decode-*``, the extraction (everything before the first
    step, per train image) for ``feature*``, the training step for the task runs."""
    if r["case"].startswith("decode"):
        return r.get("decode_s_per_image")
    if r["case"].startswith("feature"):
        return r["time_to_first_step_s"] / r["images"]
    return r.get("train_s_per_image")


def _rss_split() -> dict[str, float]:
    """This process's resident memory now, in MB: anonymous (its own) and file-backed (mapped caches, libraries)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[f"rss_{key[3:].lower()}_end_mb"] = int(value.split()[0]) / 1024
    return out


def flatness(runs: list[dict]) -> list[str]:
    """Per case: cost per image and peak RSS at the largest size over the smallest (target within FLAT_WITHIN)."""
    sizes = sorted({r["images"] for r in runs})
    if len(sizes) < 2:
        return []
    small, large = sizes[0], sizes[-1]
    by = {(r["images"], r["case"]): r for r in runs}
    parts = []
    for case in CASES:
        a, b = by.get((small, case)), by.get((large, case))
        if a is None or b is None:
            continue
        cost = _per_image_cost(b) / _per_image_cost(a) if _per_image_cost(a) and _per_image_cost(b) else None
        rss = b["peak_rss_mb"] / a["peak_rss_mb"]
        anon = (
            b["rss_anon_end_mb"] / a["rss_anon_end_mb"]
            if a.get("rss_anon_end_mb") and b.get("rss_anon_end_mb")
            else None
        )
        flags = [
            name
            for name, v in (("time", cost), ("peak RSS", rss), ("own memory", anon))
            if v is not None and v > FLAT_WITHIN
        ]
        parts.append(
            f"{case} time/img {'-' if cost is None else f'{cost:.2f}x'}, peak RSS {rss:.2f}x, own memory (anon "
            f"RSS at the end) {'-' if anon is None else f'{anon:.2f}x'}"
            + (f" (over: {', '.join(flags)})" if flags else "")
        )
    lines = [
        f"Flatness, {large} over {small} images (target: within {FLAT_WITHIN:.2f}x; time/img is the decode for "
        "`decode-*`, the extraction for `feature*`, the training step for the task runs):",
        "",
        *(f"- {part}" for part in parts),
        "",
    ]
    stream = by.get((large, "stream"))
    if stream is not None:
        first = stream["time_to_first_step_s"]
        verdict = "met" if first < STREAM_FIRST_STEP_S else "missed"
        lines.append(
            f"Streaming at {large} images: first training step after {first:.1f} s "
            f"(target: under {STREAM_FIRST_STEP_S:.0f} s, {verdict})."
        )
    return lines


def render(rows: dict) -> str:
    """The results as a markdown table per case group (what benchmarks/results/scale.md holds)."""

    def f(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    def rss_end(r: dict) -> str:
        return f"{f(r.get('rss_anon_end_mb'), 1, 0)} / {f(r.get('rss_file_end_mb'), 1, 0)}"

    runs = sorted(rows["runs"], key=lambda r: (r["images"], CASES.index(r["case"])))
    sizes = sorted({r["images"] for r in runs})
    span = f"from {sizes[0]:,} to {sizes[-1]:,}" if len(sizes) > 1 else f"at {sizes[0]:,}" if sizes else "at no"
    lines = [f"# Scale benchmark: the input pipeline {span} images (`benchmarks/scale.py`)", ""]
    lines += [f"Machine: {rows['machine']}", ""]
    lines += [
        "| images | case | load (s) | decode (ms/img) | one read pass (ms/img) | cache bytes/img | peak RSS (MB) | "
        "RSS at end: anon / file (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r["case"].startswith("decode"):
            lines.append(
                f"| {r['images']} | {r['case']} | {f(r['load_s'])} | {f(r['decode_s_per_image'], 1000, 2)} | "
                f"{f(r['read_pass_s_per_image'], 1000, 2)} | {r['cache_bytes_per_image']:.0f} | "
                f"{r['peak_rss_mb']:.0f} | {rss_end(r)} |"
            )
    lines += [
        "",
        "| images | case | time to first step (s) | training (ms/img) | disk: Arrow / decoded / features (MB, "
        "train + test) | all caches per train image (KB) | peak RSS (MB) | RSS at end: anon / file (MB) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if not r["case"].startswith("decode"):
            n, b = r["images"], r["cache_bytes"]
            per = " / ".join(f"{b.get(k, 0) / 2**20:.1f}" for k in ("datasets_arrow", "decoded", "features"))
            lines.append(
                f"| {n} | {r['case']} | {f(r['time_to_first_step_s'])} | {f(r['train_s_per_image'], 1000, 2)} | "
                f"{per} | {sum(b.values()) / n / 1024:.1f} | {r['peak_rss_mb']:.0f} | {rss_end(r)} | "
                f"{f(r['wall_s'], 1, 0)} |"
            )
    lines += [""] + flatness(runs) + [""] if len(sizes) > 1 else [""]
    lines += [
        "Each row is a fresh process with empty caches (a cold start). The labels of the synthetic images carry no",
        "signal (image k has label k % 10): the runs measure cost, not accuracy. `decode-*`: the train split only;",
        "run rows: the whole run's caches (train and test splits; the feature runs decode the eval storage, 224 px).",
        f"Every run trains {STEPS} steps of {BATCH} images at every size; training (ms/img) is steps 2 to {STEPS}.",
        "`stream`: the train split is read from the parquet shards as the steps need it: nothing of it is converted,",
        "checked or decoded ahead: its disk is the test split's eval cache alone (the streamed test split is held in",
        "memory); its time to the first step is the test split's read, the check of its first 256 rows and the",
        "first batch (the whole test split is checked and decoded at the first evaluation, here the final scoring).",
        f"Sets above {DISTINCT_IMAGES} images reuse {DISTINCT_IMAGES} distinct JPEG files in turn (each row is still",
        "read and decoded on its own). Peak RSS counts the pages of memory-mapped caches the process touched; the",
        "RSS at the end of the case splits into the process's own memory (anon) and mapped files (caches, libraries).",
        "Times follow the load of the shared machine (one run per cell): compare rows of one size, which ran back",
        "to back.",
        f"Command: `nice python benchmarks/scale.py --sizes {' '.join(str(n) for n in sizes)} "
        "--out benchmarks/results/scale.json --md benchmarks/results/scale.md`"
        + (f" (skipped: {' '.join(rows['skipped'])})" if rows.get("skipped") else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _skip_rule(value: str) -> tuple[int | None, str]:
    """``SIZE:CASE`` (one size) or ``CASE`` (every size)."""
    size, _, case = value.rpartition(":")
    if case not in CASES:
        raise argparse.ArgumentTypeError(f"{value!r}: the case must be one of {', '.join(CASES)}")
    return (int(size) if size else None), case


def main() -> None:
    """Generate the datasets, run every case in a fresh process, write the JSON (and ``--md``), print the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument(
        "--skip",
        nargs="+",
        type=_skip_rule,
        default=[],
        metavar="[SIZE:]CASE",
        help="leave a case out at one size (50000:feature) or at every size (feature)",
    )
    p.add_argument("--work", default=os.path.join(ROOT, "outputs", "benchmarks", "scale"))
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "benchmarks", "scale.json"))
    p.add_argument("--md", help="also write the tables as markdown here (benchmarks/results/scale.md)")
    p.add_argument("--render", action="store_true", help="only rewrite --md from --out, run nothing")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, a.data, a.work)))
        return
    rows = json.load(open(a.out)) if os.path.exists(a.out) else {"machine": {}, "runs": []}
    if not a.render:
        measure(a, rows)
    if a.md:
        with open(a.md, "w") as f:
            f.write(render(rows))
    print(render(rows))


def measure(a: argparse.Namespace, rows: dict) -> None:
    """Every size's dataset, then each of its cases in a fresh process; ``rows`` (and ``--out``) updated per case."""
    rows["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    rows["skipped"] = [f"{size}:{case}" if size else case for size, case in a.skip]
    for n in a.sizes:
        data = os.path.join(a.work, f"jpeg320x256-{n}")
        t = time.perf_counter()
        generate(n, data)
        print(f"[scale] {n} images at {data} ({time.perf_counter() - t:.0f} s)", flush=True)
        for case in a.cases:
            if (None, case) in a.skip or (n, case) in a.skip:
                print(f"[scale] {case} at {n} images: skipped", flush=True)
                continue
            work = os.path.join(a.work, "runs", f"{n}-{case}")
            subprocess.run(["rm", "-rf", work], check=True)
            env = {
                **os.environ,
                "HF_TRANSFER_CACHE": os.path.join(work, "cache"),
                "HF_DATASETS_CACHE": os.path.join(work, "datasets"),
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
            }
            cmd = [sys.executable, __file__, "--case", case, "--data", data, "--work", work]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"case {case} at {n} images failed")
            result = {"images": n, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows["runs"] = [r for r in rows["runs"] if (r["images"], r["case"]) != (n, case)] + [result]
            print(json.dumps(result), flush=True)
            os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)
            subprocess.run(["rm", "-rf", work], check=True)


if __name__ == "__main__":
    main()
