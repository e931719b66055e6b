"""Input-path benchmark: the stock recipe vs the fast path, side by side in one process run.

    python benchmarks/bench_input.py [--out benchmarks/results/input_cpu.json] [--num-workers 2] [--device cpu]

For each case (dataset x input size) and split (train = augmented, eval), it measures images/s of

* stock: ``ImageDomainDataset`` (datasets ``Image`` column + per-sample torchvision PIL
  transforms) + ``DataLoader`` + ``collate_images``, batches moved to the device;
* fast: ``DecodedImages`` (uint8 memmap cache, built beforehand: its one-time decode is timed
  separately) + ``DataLoader`` + ``BatchAugment`` on the device (on the CPU: in the main process
  with torch's threads, and also inside the loader workers through ``AugmentingCollate``).

Datasets: the built-in ``digits-printed`` (32x32 PNGs; train split for train, test split for eval)
and synthetic photo-like 320x256 JPEGs generated with Pillow into a temporary folder. Throughput is steady
state: the clock starts once the first batch is through (worker start-up excluded; it is reported as
``first_batch_s``); a split of one batch or less is timed over its next pass. Peak RSS is measured per phase
(the process's high-water mark is reset through /proc/self/clear_refs on Linux; loader workers are
read from /proc/<pid>/status before they exit), and the whole run's ``resource.getrusage`` peaks
are reported too. Prints a markdown table and writes JSON to ``--out`` (default under the git-ignored
``outputs/benchmarks/``; the committed numbers are written with ``--out benchmarks/results/input_cpu.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

import datasets
import numpy as np
import torch
from _measure import mb as _mb  # noqa: E402
from _measure import reset_peak as _reset_peak
from _measure import status_kb as _status_kb
from _measure import sync as _sync

from hf_transfer.data.augment import BatchAugment
from hf_transfer.data.builtin import load_builtin
from hf_transfer.data.decoded import DecodedImages, collate_decoded
from hf_transfer.data.paired import ImageDomainDataset, collate_images
from hf_transfer.data.transforms import DataConfig, eval_transform, train_transform


class AugmentingCollate:
    """A DataLoader ``collate_fn`` that runs :class:`BatchAugment` in the loader workers: the CPU variant
    measured here (the library keeps the augmentation in the model's forward)."""

    def __init__(self, augment: BatchAugment):
        self.augment = augment

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_decoded(examples)
        with torch.no_grad():
            batch["pixel_values"] = self.augment(batch["pixel_values"], batch.pop("image_size", None))
        return batch


# ------------------------------------------------------------------------------------------
# data


def synthetic_jpegs(n: int, folder: str, seed: int = 0, height: int = 256, width: int = 320) -> datasets.Dataset:
    """``n`` photo-like 320x256 JPEGs (smooth colour fields + edges + noise), embedded as bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    cells, labels = [], []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for k in range(n):
        low = rng.random((3, 5, 6)).astype(np.float32)
        field = np.stack(
            [
                np.asarray(Image.fromarray((c * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))
                for c in low
            ],
            axis=-1,
        ).astype(np.float32)
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
        disk = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        field[disk] = 0.5 * field[disk] + 0.5 * rng.uniform(0, 255, 3)
        field += rng.normal(0, 6, field.shape)
        img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        path = os.path.join(folder, f"{k:05d}.jpg")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        cells.append({"bytes": buf.getvalue(), "path": None})
        labels.append(k % 10)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    return datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features)


# ------------------------------------------------------------------------------------------
# measurement


def run_loader(
    dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    max_images: int,
    on_batch,
    shuffle: bool,
    collate_fn=collate_images,
    repeats: int = 1,
) -> dict:
    """Best of ``repeats`` passes (the machine may be shared: the best pass is the least disturbed)."""
    runs = [
        _run_loader_once(dataset, batch_size, num_workers, device, max_images, on_batch, shuffle, collate_fn)
        for _ in range(max(1, repeats))
    ]
    best = max(runs, key=lambda r: r["img_per_s"])
    best["all_img_per_s"] = [r["img_per_s"] for r in runs]
    for key in ("peak_rss_main_mb", "peak_rss_workers_mb"):
        values = [r[key] for r in runs if r[key] is not None]
        best[key] = max(values) if values else None
    return best


def _run_loader_once(
    dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    max_images: int,
    on_batch,
    shuffle: bool,
    collate_fn,
) -> dict:
    """Time ``max_images`` images through a DataLoader after a first (warm-up) batch, ``on_batch`` applied on
    the device; a dataset too small for that is passed over again (the same, persistent workers)."""
    if len(dataset) == 0:
        raise ValueError("nothing to time: the dataset is empty")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    had_reset = _reset_peak()
    worker_peak_kb = 0
    seen = 0
    checksum = 0.0
    t_iter = time.perf_counter()
    it = iter(loader)
    start = None
    while seen < max_images:
        try:
            batch = next(it)
        except StopIteration:  # the pass ended before max_images were timed: another one
            it = iter(loader)
            continue
        x = batch["pixel_values"].to(device, non_blocking=True)
        y = on_batch(x)
        checksum += float(y[:, :, 0, 0].float().sum())  # keeps the work from being skipped
        if start is None:  # steady state: the clock starts once the first batch is through
            _sync(device)
            first_batch_s = time.perf_counter() - t_iter
            start = time.perf_counter()
            continue
        seen += x.shape[0]
    _sync(device)
    elapsed = time.perf_counter() - start
    for w in getattr(it, "_workers", []) or []:
        worker_peak_kb += _status_kb(w.pid, "VmHWM") or 0
    del it
    main_peak = _status_kb("self", "VmHWM") if had_reset else None
    return {
        "images": seen,
        "seconds": round(elapsed, 3),
        "img_per_s": round(seen / elapsed, 1),
        "first_batch_s": round(first_batch_s, 3),
        "peak_rss_main_mb": _mb(main_peak),
        "peak_rss_workers_mb": _mb(worker_peak_kb) if num_workers else 0.0,
        "checksum": checksum,
    }


def bench_case(name: str, splits: dict, size: int, args, device: torch.device, cache_dir: str) -> list[dict]:
    cfg = DataConfig(input_size=(3, size, size))
    rows = []
    for split in ("train", "eval"):
        ds = splits[split]
        # the first batch is warm-up; a split of one batch or less is timed over its second pass
        n = min(len(ds) - args.batch_size, args.max_images) if len(ds) > args.batch_size else len(ds)
        augment = args.augment if split == "train" else "none"
        stock_tf = train_transform(cfg, augment) if split == "train" else eval_transform(cfg)
        stock_ds = ImageDomainDataset(ds, stock_tf)
        stock = run_loader(
            stock_ds,
            args.batch_size,
            args.num_workers,
            device,
            n,
            lambda x: x,
            shuffle=split == "train",
            repeats=args.repeats,
        )

        _reset_peak()
        t0 = time.perf_counter()
        fast_ds = DecodedImages(ds, cfg, split, cache_dir=cache_dir, num_workers=args.decode_workers, progress=False)
        decode_s = time.perf_counter() - t0
        decode_peak = _status_kb("self", "VmHWM")
        aug = BatchAugment(
            cfg, augment, interpolation=args.interpolation, out_dtype=args.dtype, channels_last=args.channels_last
        ).to(device)
        aug.train(split == "train")
        with torch.no_grad():
            fast = run_loader(
                fast_ds,
                args.batch_size,
                args.num_workers,
                device,
                n,
                aug,
                shuffle=split == "train",
                repeats=args.repeats,
            )
        in_workers = None
        if device.type == "cpu" and args.num_workers > 0:
            # CPU variant: the batched augmentation runs in the loader workers (AugmentingCollate)
            aug_cpu = BatchAugment(
                cfg, augment, interpolation=args.interpolation, out_dtype=args.dtype, channels_last=args.channels_last
            ).train(split == "train")
            in_workers = run_loader(
                fast_ds,
                args.batch_size,
                args.num_workers,
                device,
                n,
                lambda x: x,
                shuffle=split == "train",
                collate_fn=AugmentingCollate(aug_cpu),
                repeats=args.repeats,
            )
        cache_mb = os.path.getsize(fast_ds.path / "images.npy") / 2**20
        rows.append(
            {
                "dataset": name,
                "size": size,
                "split": split,
                "augment": augment,
                "num_images_dataset": len(ds),
                "storage_hw": list(fast_ds.storage_hw),
                "stock": stock,
                "fast": fast,
                "fast_aug_in_workers": in_workers,
                "ratio": round(fast["img_per_s"] / stock["img_per_s"], 2),
                "ratio_aug_in_workers": round(in_workers["img_per_s"] / stock["img_per_s"], 2) if in_workers else None,
                "decode_once_s": round(decode_s, 2),
                "decode_once_img_per_s": round(len(ds) / decode_s, 1),
                "decode_peak_rss_mb": _mb(decode_peak),
                "cache_mb": round(cache_mb, 1),
            }
        )
        extra = f", fast aug-in-workers {in_workers['img_per_s']} img/s" if in_workers else ""
        print(
            f"  {name} @{size} {split}: stock {stock['img_per_s']} img/s, fast {fast['img_per_s']} img/s "
            f"(x{rows[-1]['ratio']}){extra}, decode once {rows[-1]['decode_once_img_per_s']} img/s",
            flush=True,
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| data | size | split | stock img/s | fast img/s (aug on device) | ratio | fast img/s (aug in "
        "workers) | ratio | one-time decode img/s | cache MB "
        "| peak RSS stock main+workers MB | peak RSS fast main+workers MB |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        s, f, w = r["stock"], r["fast"], r["fast_aug_in_workers"]
        wcol = f"{w['img_per_s']} | **{r['ratio_aug_in_workers']}x**" if w else "- | -"
        lines.append(
            f"| {r['dataset']} | {r['size']} | {r['split']} | {s['img_per_s']} | {f['img_per_s']} | "
            f"**{r['ratio']}x** | {wcol} | {r['decode_once_img_per_s']} | {r['cache_mb']} | "
            f"{s['peak_rss_main_mb']}+{s['peak_rss_workers_mb']} | "
            f"{f['peak_rss_main_mb']}+{f['peak_rss_workers_mb']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--out",
        default="outputs/benchmarks/input.json",
        help="JSON results path (the committed numbers: benchmarks/results/input_cpu.json)",
    )
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (both paths)")
    p.add_argument("--decode-workers", type=int, default=0, help="processes for the one-time decode")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=2048, help="images timed per measurement")
    p.add_argument("--num-jpegs", type=int, default=512, help="synthetic 320x256 JPEGs to generate")
    p.add_argument("--cases", default="digits@224,jpeg@224,digits@32", help="comma list of <digits|jpeg>@<input size>")
    p.add_argument("--repeats", type=int, default=1, help="passes per measurement; the best is reported")
    p.add_argument("--augment", default="standard", choices=["standard", "light"])
    p.add_argument(
        "--interpolation", default=None, help="BatchAugment crop interpolation (default: the config's, bicubic)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    args.dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)

    work = tempfile.mkdtemp(prefix="hf_transfer_bench_input_")
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "platform": platform.platform(),
    }
    print(f"# input-path benchmark ({env['device']}, {env['cpu_count']} CPUs, torch {env['torch']})", flush=True)
    rows: list[dict] = []
    try:
        data: dict[str, dict] = {}
        for case in args.cases.split(","):
            name, size = case.strip().split("@")
            if name not in data:
                if name == "digits":
                    dd = load_builtin("digits-printed")
                    data[name] = {"train": dd["train"], "eval": dd["test"]}
                elif name == "jpeg":
                    folder = os.path.join(work, "jpegs")
                    os.makedirs(folder, exist_ok=True)
                    jpegs = synthetic_jpegs(args.num_jpegs, folder)
                    data[name] = {"train": jpegs, "eval": jpegs}
                else:
                    raise SystemExit(f"unknown dataset {name!r} in --cases")
            label = "digits-printed" if name == "digits" else "jpeg 320x256"
            rows += bench_case(label, data[name], int(size), args, device, os.path.join(work, "decoded"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(rows)
    usage = {
        "ru_maxrss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "ru_maxrss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    print()
    print(table)
    print(
        f"\nwhole run peak RSS (getrusage): self {usage['ru_maxrss_self_mb']} MB, "
        f"largest child {usage['ru_maxrss_children_mb']} MB; batch {args.batch_size}, "
        f"{args.num_workers} loader workers, augment {args.augment!r}, best of {args.repeats}"
    )
    result = {
        "env": env,
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "rusage": usage,
        "markdown": table,
        "command": " ".join(sys.argv),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
