"""Scale benchmark: what the input pipeline costs per image as a local dataset grows (1k, 10k, 50k images).

    nice python benchmarks/scale.py --sizes 1000 10000 [--out benchmarks/results/scale.json]

Data: synthetic photo-like 320x256 JPEGs (smooth colour fields, a disk, noise; 10 classes), written as a local
parquet folder (``train-*.parquet`` shards of 1000 rows + one ``test-*.parquet`` of 10%), generated once per size
under ``--work`` (default ``outputs/benchmarks/scale``). Each case runs in a fresh process (its peak RSS is its
own, ``resource.getrusage``), with its own empty caches (``HF_TRANSFER_CACHE``, ``HF_DATASETS_CACHE``), so every
number is a cold start:

* ``decode-raw`` / ``decode-jpeg``: load the folder (datasets' parquet -> Arrow conversion and the unreadable-image
  check of every image, as a run does), then decode the train split once into the fast path's cache
  (``DecodedImages``, train storage 256x320, ``--decode_cache_format raw`` / ``jpeg`` q90), then one pass of a
  DataLoader over it (batch 64, main process: the read, plus the JPEG decode for ``jpeg``).
* ``task-raw`` / ``task-jpeg``: a whole ``hf-transfer train --mode task`` run (test_resnet, 224 px, batch 32,
  ``--max_steps`` 20, eval on the test split) in the same process layout as the CLI: time to the first training
  step from the start of the run (loading, checks, decoding all included) and the training time per image.
* ``feature`` / ``feature-fp16``: a whole ``--mode feature`` run (same backbone; features extracted once for the
  train and test splits, a linear head trained 20 steps): time to the first step (the extraction is all of it)
  and the feature cache's bytes per image, float32 and ``--feature_dtype float16``.

Disk per image: the bytes of each cache (datasets' Arrow copy, the decoded images, the features) divided by the
images in it. Streaming (``--streaming``) is not measured: it is not built. The machine this was run on is
recorded with the numbers (a shared 2-core CPU gives long and noisy times: read the ratios).
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
CASES = ("decode-raw", "decode-jpeg", "task-raw", "task-jpeg", "feature", "feature-fp16")
SHARD_ROWS = 1000


def generate(n: int, folder: str, seed: int = 0) -> None:
    """``n`` train + ``n // 10`` test 320x256 JPEGs as parquet shards of :data:`SHARD_ROWS` rows."""
    import datasets
    import numpy as np
    from PIL import Image

    if os.path.exists(os.path.join(folder, "done")):
        return
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = 256, 320
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)])}
    )
    for split, rows in (("train", n), ("test", max(n // 10, 10))):
        shards = -(-rows // SHARD_ROWS)
        for s in range(shards):
            cells, labels = [], []
            for k in range(s * SHARD_ROWS, min(rows, (s + 1) * SHARD_ROWS)):
                low = rng.random((3, 5, 6)).astype(np.float32)
                field = np.stack(
                    [
                        np.asarray(Image.fromarray((c * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))
                        for c in low
                    ],
                    axis=-1,
                ).astype(np.float32)
                cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
                field[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] += rng.uniform(-80, 80, 3)
                field += rng.normal(0, 6, field.shape)
                buf = io.BytesIO()
                Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
                cells.append({"bytes": buf.getvalue(), "path": None})
                labels.append(k % 10)
            ds = datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features)
            ds.to_parquet(os.path.join(folder, f"{split}-{s:05d}-of-{shards:05d}.parquet"))
    open(os.path.join(folder, "done"), "w").close()


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) if path else 0


def _run_args(case: str, data: str, out: str) -> dict:
    args = {
        "backbone": "test_resnet",
        "target": data,
        "image_size": 224,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "max_steps": 20,
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
        # steps 2..20: the steady training cost (the first step pays the lazy starts)
        result["train_s_per_image"] = (step_ends[-1] - step_ends[0]) / ((len(step_ends) - 1) * 32)
        result["target_accuracy"] = results["metrics"]["target"]["accuracy"]
    caches = {
        "datasets_arrow": os.environ["HF_DATASETS_CACHE"],
        "decoded": os.path.join(os.environ["HF_TRANSFER_CACHE"], "decoded"),
        "features": os.path.join(os.environ["HF_TRANSFER_CACHE"], "features"),
    }
    result["cache_bytes"] = {k: _tree_bytes(v) for k, v in caches.items() if os.path.isdir(v)}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["wall_s"] = time.perf_counter() - start
    return result


def render(rows: dict) -> str:
    """The results as a markdown table per case group (what benchmarks/results/scale.md holds)."""

    def f(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    runs = sorted(rows["runs"], key=lambda r: (r["images"], CASES.index(r["case"])))
    lines = ["# Scale benchmark: the input pipeline from 1k to 10k images (`benchmarks/scale.py`)", ""]
    lines += [f"Machine: {rows['machine']}", ""]
    lines += [
        "| images | case | load (s) | decode (ms/img) | one read pass (ms/img) | cache bytes/img | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r["case"].startswith("decode"):
            lines.append(
                f"| {r['images']} | {r['case']} | {f(r['load_s'])} | {f(r['decode_s_per_image'], 1000, 2)} | "
                f"{f(r['read_pass_s_per_image'], 1000, 2)} | {r['cache_bytes_per_image']:.0f} | "
                f"{r['peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "| images | case | time to first step (s) | training (ms/img) | disk: Arrow / decoded / features (MB, "
        "train + test) | peak RSS (MB) | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if not r["case"].startswith("decode"):
            n, b = r["images"], r["cache_bytes"]
            per = " / ".join(f"{b.get(k, 0) / 2**20:.1f}" for k in ("datasets_arrow", "decoded", "features"))
            lines.append(
                f"| {n} | {r['case']} | {f(r['time_to_first_step_s'])} | {f(r['train_s_per_image'], 1000, 2)} | "
                f"{per} | {r['peak_rss_mb']:.0f} | {f(r['wall_s'], 1, 0)} |"
            )
    lines += [
        "",
        "Each row is a fresh process with empty caches (a cold start). The labels of the synthetic images carry no",
        "signal (image k has label k % 10): the runs measure cost, not accuracy. `decode-*`: the train split only;",
        "run rows: the whole run's caches (train and test splits; the feature runs decode the eval storage, 224 px).",
        "Times follow the load of the shared machine (one run per cell): compare rows of one size, which ran back",
        "to back (here the 1k rows ran on a quieter machine than the 10k rows).",
        "Command: `nice python benchmarks/scale.py --sizes 1000 10000 --out benchmarks/results/scale.json "
        "--md benchmarks/results/scale.md`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Generate the datasets, run every case in a fresh process, write the JSON and print a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
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
    if a.render:
        if a.md:
            with open(a.md, "w") as f:
                f.write(render(rows))
        print(render(rows))
        return
    rows["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    for n in a.sizes:
        data = os.path.join(a.work, f"jpeg320x256-{n}")
        t = time.perf_counter()
        generate(n, data)
        print(f"[scale] {n} images at {data} ({time.perf_counter() - t:.0f} s)", flush=True)
        for case in a.cases:
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
