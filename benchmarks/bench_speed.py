"""Speed benchmark: the stock recipe vs hf_transfer, side by side in ONE process run.

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --out benchmarks/results/speed_cpu.json   # CPU
    python benchmarks/bench_speed.py --out speed_h200.json                                        # on a GPU

Three kinds of case (``--cases``, comma list of ``<kind>:<timm architecture>@<input size>:<data>``):

``finetune``
    stock = the recipe of shared/bench/stock_recipe_anchor.py: ``datasets`` Image column +
    per-sample torchvision PIL transforms (RandomResizedCrop + flip + ToTensor + Normalize) in
    ``set_transform`` + a plain ``transformers.Trainer`` around ``timm.create_model`` (logits + CE
    loss; bf16 on CUDA, nothing else). ours = :func:`hf_transfer.training.run.prepare_run` in task mode
    (``input_path=fast``: uint8 decoded cache + batched crop/flip/normalise inside the model's
    forward) + ``trainer.train()``, with bf16 / channels_last / ``torch.compile`` per device
    (``--bf16/--channels_last/--compile auto``: all on for CUDA, all off on the CPU). Same
    architecture (random init), batch size, steps, loader workers, optimizer (the Trainer's
    default AdamW) and learning rate. img/s is steady state: the clock starts after
    ``--warmup`` steps (compilation, worker start-up) and stops at the last step; the one-time
    setup (building the model, the Trainer, and for ours the decode of the train + test images)
    is reported apart, with the decode time on its own.
``probe`` (the 10-epoch linear probe)
    naive = the same stock recipe with every parameter but the classifier frozen, for
    ``--probe_epochs`` epochs (images -> backbone -> head every epoch), as the anchor's
    ``frozen`` section. ours = feature mode (one extraction pass over train + test, then the head
    trained on cached features for the same epochs). Total wall time, setup included, for both
    arms (setup = data subset + model + Trainer; for ours everything ``prepare_run`` does,
    extraction included; as shipped: the fast input path, decoded in-process with
    ``dataloader_num_workers=0``, features streamed to a memory-mapped cache). A third arm,
    ``ours+fastx``, is the same with the one-time decode in ``--workers`` processes (what
    ``--dataloader_num_workers N`` does in feature mode; patched in here so that the head training's
    DataLoader keeps no workers in both arms).
``extract`` (one inference pass for feature caching)
    stock = the anchor's ``extract`` section (stock eval transforms in ``set_transform``, a
    DataLoader with ``--workers`` workers, ``timm`` model without head, bf16 autocast on CUDA);
    ours = ``extract_features(input_path="fast")`` cold (decode into the uint8 cache included)
    and warm (decoded cache present); also ``extract_features(input_path="stock")`` as feature
    mode calls it today (no loader workers).

Data: ``digits`` = the built-in ``digits-printed`` domain (32x32 PNGs); ``jpeg`` = synthetic
320x256 JPEGs made like the anchors' (``one_jpeg`` of the anchor script, ``--num_jpegs`` of them +
1/8 as many for a test split), saved with ``save_to_disk`` in a temporary folder and given to
hf_transfer as a local dataset path; the stock arms read the very same rows (same seeded subset).

Memory: per arm, the main process's peak RSS (the high-water mark is reset through
/proc/self/clear_refs on Linux) and the loader workers' PSS (proportional set size: forked workers
share the parent's pages, which RSS would count once per worker; read at the last step), and on
CUDA ``torch.cuda.max_memory_allocated`` (reset per arm); the whole run's ``resource.getrusage``
peaks at the end. Prints markdown tables; ``--out X.json`` writes the JSON and ``X.md``.

On a shared CPU run with ``OMP_NUM_THREADS=1``: OpenMP threads oversubscribe badly under
contention. Ratios come from arms run one after the other in the same process, so they share the
machine's state; repeat (``--repeats``) when the machine is busy (the best pass of each arm is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from _measure import mb as _mb, reset_peak as _reset_peak, status_kb as _status_kb, sync as _sync

CPU_CASES = ("finetune:test_resnet@64:digits,finetune:test_resnet@64:jpeg,finetune:test_vit@160:jpeg,"
             "probe:test_resnet@64:digits,probe:test_resnet@64:jpeg,"
             "extract:test_resnet@64:digits,extract:test_resnet@64:jpeg")
CUDA_CASES = ("finetune:vit_base_patch16_224@224:jpeg,finetune:resnet50@224:jpeg,"
              "probe:vit_base_patch16_224@224:jpeg,extract:vit_base_patch16_224@224:jpeg")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CROP_PCT = 0.875  # the stock eval recipe's Resize(int(size / 0.875)); ours gets the same crop_pct


# ------------------------------------------------------------------------------------------
# memory





def _children_pss_mb() -> float:
    """Sum of the proportional set size (PSS) of this process's live children (the DataLoader workers).

    Not their VmHWM: forked workers share the parent's pages, and RSS counts those in every worker
    (each would look as big as the main process). PSS splits shared pages among their users, so
    the sum is the memory the workers really add; it is read while they run (at the last step)."""
    try:
        import psutil

        total = 0
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(Exception):
                total += child.memory_full_info().pss
        return round(total / 2**20, 1)
    except ImportError:
        return 0.0


class Memory:
    """Peak memory of one arm: main-process RSS (reset at start), workers, and CUDA."""

    def __init__(self, device: torch.device):
        self.device, self.workers_mb = device, 0.0

    def __enter__(self):
        self.reset = _reset_peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def note_workers(self) -> None:
        self.workers_mb = max(self.workers_mb, _children_pss_mb())

    def __exit__(self, *exc):
        self.main_mb = _mb(_status_kb("self")) if self.reset else None
        self.gpu_mb = (round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
                       if self.device.type == "cuda" else None)
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_main_mb": self.main_mb, "workers_pss_mb": self.workers_mb,
                "peak_gpu_mb": self.gpu_mb}


# ------------------------------------------------------------------------------------------
# timing helpers



@contextlib.contextmanager
def timed_calls(owner, name: str, bucket: list):
    """Record the wall time of every call of ``owner.name`` into ``bucket`` (benchmark-local patch)."""
    original = getattr(owner, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            bucket.append(time.perf_counter() - t)

    setattr(owner, name, wrapper)
    try:
        yield bucket
    finally:
        setattr(owner, name, original)


def make_clock(device: torch.device, memory: Memory):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """A timestamp after every optimizer step (device synchronised); worker RSS at the end."""

        def __init__(self):
            self.stamps: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            _sync(device)
            self.stamps.append(time.perf_counter())
            if state.global_step == state.max_steps:
                memory.note_workers()

    return Clock()


def _training_args(args, device, output_dir: str, **over) -> dict:
    """TrainingArguments shared by every Trainer of the benchmark (stock and ours)."""
    cuda = device.type == "cuda"
    out = {"output_dir": output_dir, "per_device_train_batch_size": args.batch_size, "learning_rate": 1e-3,
           "bf16": args.bf16, "use_cpu": not cuda, "dataloader_num_workers": args.workers,
           "dataloader_pin_memory": cuda, "dataloader_persistent_workers": args.workers > 0,
           "dataloader_drop_last": True, "remove_unused_columns": False, "save_strategy": "no",
           "logging_strategy": "no", "eval_strategy": "no", "report_to": "none", "disable_tqdm": True,
           "seed": args.seed}
    out.update(over)
    if not out["dataloader_num_workers"]:
        out["dataloader_persistent_workers"] = False
    return out


# ------------------------------------------------------------------------------------------
# data


def one_jpeg(seed: int) -> bytes:
    """One synthetic 320x256 JPEG, exactly as shared/bench/stock_recipe_anchor.py makes them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small).resize((320, 256), Image.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (256, 320, 3))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_jpeg_domain(n_train: int, folder: str, processes: int, num_classes: int = 10) -> tuple[str, float]:
    """``n_train`` + ``n_train // 8`` JPEGs as a DatasetDict (Image + ClassLabel) saved to ``folder``."""
    import datasets

    t = time.perf_counter()
    n_test = max(num_classes, n_train // 8)
    with Pool(max(1, processes)) as pool:
        blobs = pool.map(one_jpeg, range(n_train + n_test), chunksize=64)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{i}" for i in range(num_classes)])})

    def split(lo, hi):
        return datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b in blobs[lo:hi]],
             "label": [i % num_classes for i in range(lo, hi)]}, features=features)

    datasets.DatasetDict({"train": split(0, n_train), "test": split(n_train, n_train + n_test)}).save_to_disk(folder)
    return folder, time.perf_counter() - t


class Data:
    """The domains of the run, loaded once (hf_transfer's loader: the stock arms read the same rows)."""

    def __init__(self, args, work: str):
        self.args, self.work, self.domains, self.specs, self.notes = args, work, {}, {}, {}

    def spec(self, name: str) -> str:
        if name not in self.specs:
            if name == "digits":
                self.specs[name] = "builtin:digits-printed"
            elif name == "jpeg":
                folder, secs = make_jpeg_domain(self.args.num_jpegs, os.path.join(self.work, "jpeg_domain"),
                                                self.args.gen_processes)
                self.specs[name] = folder
                self.notes["jpeg_generation_s"] = round(secs, 1)
            else:
                raise SystemExit(f"unknown data {name!r} in --cases (digits | jpeg)")
        return self.specs[name]

    def domain(self, name: str):
        from hf_transfer.data.load import load_domain

        if name not in self.domains:
            self.domains[name] = load_domain(self.spec(name), seed=self.args.seed)
        return self.domains[name]

    def train(self, name: str, n: int | None):
        """The seeded subset hf_transfer takes with ``max_train_samples=n``."""
        from hf_transfer.training.modes.common import subset

        return subset(self.domain(name)["train"], n, self.args.seed)

    def num_classes(self, name: str) -> int:
        return len(self.domain(name)["train"].features["label"].names)


# ------------------------------------------------------------------------------------------
# the stock recipe (shared/bench/stock_recipe_anchor.py)


class TimmForTrainer(torch.nn.Module):
    """What a stock Trainer user writes around a timm model: logits + CE loss."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def stock_dataset(ds, res: int, train: bool = True):
    """``set_transform`` with per-sample torchvision PIL transforms, as the anchor (and the examples)."""
    from torchvision import transforms as T

    ds = ds.with_format(None)
    norm = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if train:
        tf = T.Compose([T.RandomResizedCrop(res), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    else:
        tf = T.Compose([T.Resize(int(res / CROP_PCT)), T.CenterCrop(res), T.ToTensor(), norm])

    def preprocess(batch):
        batch["pixel_values"] = [tf(im.convert("RGB")) for im in batch["image"]]
        del batch["image"]
        return batch

    ds.set_transform(preprocess)
    return ds


def stock_collate(examples):
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples])}


def stock_model(arch: str, num_classes: int, seed: int):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def stock_trainer_arm(args, device, data, arch, size, dname, n, *, freeze: bool, epochs: int | None):
    """The stock Trainer; fine-tuning (``max_steps``) or the naive frozen linear probe (``epochs``)."""
    from transformers import Trainer, TrainingArguments

    memory = Memory(device)
    t0 = time.perf_counter()
    ds = data.train(dname, n)
    net = stock_model(arch, data.num_classes(dname), args.seed)
    if freeze:
        head = {id(p) for p in net.get_classifier().parameters()}
        for p in net.parameters():
            p.requires_grad_(id(p) in head)
    clock = make_clock(device, memory)
    over = {"num_train_epochs": epochs} if epochs else {"max_steps": args.warmup + args.steps}
    targs = TrainingArguments(**_training_args(args, device, os.path.join(data.work, "out_stock"), **over))
    trainer = Trainer(model=TimmForTrainer(net), args=targs, train_dataset=stock_dataset(ds, size),
                      data_collator=stock_collate, callbacks=[clock])
    _quiet(trainer)
    setup_s = time.perf_counter() - t0
    with memory:
        t1 = time.perf_counter()
        trainer.train()
        _sync(device)
        train_s = time.perf_counter() - t1
    out = {"setup_s": round(setup_s, 2), "train_s": round(train_s, 2), "images": len(ds), **memory.as_dict()}
    out.update(_throughput(args, clock.stamps, epochs, len(ds)))
    del trainer
    return out


def _quiet(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def _throughput(args, stamps, epochs, n) -> dict:
    if epochs:
        return {"steps": len(stamps)}
    dt = stamps[-1] - stamps[args.warmup - 1] if args.warmup else stamps[-1] - stamps[0]
    steps = args.steps if args.warmup else args.steps - 1
    return {"steps": len(stamps), "timed_steps": steps, "img_per_s": round(steps * args.batch_size / dt, 1),
            "step_ms": round(1000 * dt / steps, 2)}


# ------------------------------------------------------------------------------------------
# ours (hf_transfer)


def _ours_arguments(args, device, data, arch, size, dname, mode, n, out_dir, **over):
    """(TransferArguments, TrainingArguments) of ours; ``over`` may hold fields of either."""
    import dataclasses

    from transformers import TrainingArguments

    from hf_transfer.config import arguments_from_dict

    training_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    cfg = {"mode": mode, "backbone": arch, "target": data.spec(dname), "image_size": size, "crop_pct": CROP_PCT,
           "max_train_samples": n, "max_eval_samples": args.eval_images,
           "decoded_cache_dir": os.path.join(data.work, "decoded"),
           "overwrite_output_dir": True}  # every repeat and case reuses its arm's folder
    if mode == "feature":  # options of the feature cache are refused in other modes
        cfg.update(feature_cache_dir=os.path.join(out_dir, "features"), feature_batch_size=2 * args.batch_size)
    cfg.update({k: v for k, v in over.items() if k not in training_fields})
    cfg.update(_training_args(args, device, out_dir, **{k: v for k, v in over.items() if k in training_fields}))
    return arguments_from_dict(cfg)


def ours_finetune_arm(args, device, data, arch, size, dname, n):
    from hf_transfer.data.decoded import DecodedImages
    from hf_transfer.training.run import prepare_run

    memory = Memory(device)
    decode_times: list[float] = []
    t0 = time.perf_counter()
    targs = _ours_arguments(args, device, data, arch, size, dname, "task", n,
                            os.path.join(data.work, "out_ours"), input_path="fast", augment="standard",
                            max_steps=args.warmup + args.steps, channels_last=args.channels_last)
    clock = make_clock(device, memory)
    torch.manual_seed(args.seed)
    with timed_calls(DecodedImages, "_build", decode_times):
        run = prepare_run(*targs, callbacks=[clock])
    _quiet(run.trainer)
    options = {"bf16": args.bf16, "channels_last": args.channels_last, "compile": args.compile,
               "augment_impl": "grid" if device.type == "cuda" else "loop"}
    if args.compile:
        run.model.classifier.timm_model.compile()  # in place: the wrapper calls timm_model(...)
    setup_s = time.perf_counter() - t0
    with memory:
        t1 = time.perf_counter()
        run.trainer.train()
        _sync(device)
        train_s = time.perf_counter() - t1
    out = {"setup_s": round(setup_s, 2), "decode_s": round(sum(decode_times), 2),
           "decoded_splits": len(decode_times), "train_s": round(train_s, 2),
           "images": len(run.trainer.train_dataset), "options": options, **memory.as_dict()}
    out.update(_throughput(args, clock.stamps, None, None))
    del run
    return out


def ours_probe_arm(args, device, data, arch, size, dname, n, fast_extraction: bool):
    import hf_transfer.training.modes.feature as feature_mode
    from hf_transfer.methods.feature import cache as features
    from hf_transfer.training.run import prepare_run

    memory = Memory(device)
    extract_times: list[float] = []
    # a fresh folder per call: feature (and decoded) caches must start empty in every repeat
    out_dir = tempfile.mkdtemp(prefix="out_probe_fastx_" if fast_extraction else "out_probe_", dir=data.work)
    t0 = time.perf_counter()
    targs = _ours_arguments(args, device, data, arch, size, dname, "feature", n, out_dir,
                            num_train_epochs=args.probe_epochs, dataloader_num_workers=0,
                            decoded_cache_dir=os.path.join(out_dir, "decoded"))  # cold in every repeat
    clock = make_clock(device, memory)
    torch.manual_seed(args.seed)
    cache_cls = feature_mode.FeatureCache
    if fast_extraction:  # decode in --workers processes; the head's DataLoader stays without workers
        class cache_cls(features.FeatureCache):
            def __init__(self, *a, **k):
                super().__init__(*a, **{**k, "input_path": "fast", "num_workers": args.workers,
                                        "decoded_cache_dir": os.path.join(out_dir, "decoded")})
    with memory:
        with timed_calls(features.FeatureCache, "get_or_compute", extract_times), \
                _patched(feature_mode, "FeatureCache", cache_cls):
            run = prepare_run(*targs, callbacks=[clock])
        _quiet(run.trainer)
        setup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        run.trainer.train()
        _sync(device)
        train_s = time.perf_counter() - t1
    n_train = len(run.trainer.train_dataset)
    del run
    return {"setup_s": round(setup_s, 2), "extract_s": round(sum(extract_times), 2),
            "head_train_s": round(train_s, 2), "total_s": round(setup_s + train_s, 2), "images": n_train,
            "extraction": (f"fast, decode in {args.workers} processes" if fast_extraction
                           else "as shipped (fast, decode in-process)"),
            **memory.as_dict()}


@contextlib.contextmanager
def _patched(owner, name, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


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


def case_finetune(args, device, data, arch, size, dname) -> dict:
    n = args.train_images
    stock = _arm(lambda: best_of(args, lambda: stock_trainer_arm(args, device, data, arch, size, dname, n,
                                                                   freeze=False, epochs=None), "img_per_s", True))
    ours = _arm(lambda: best_of(args, lambda: ours_finetune_arm(args, device, data, arch, size, dname, n),
                                "img_per_s", True))
    if "error" in ours and args.compile:  # one-shot GPU runs: still measure ours, eager
        failed = ours["error"]
        args.compile = False
        try:
            ours = _arm(lambda: best_of(args, lambda: ours_finetune_arm(args, device, data, arch, size, dname, n),
                                        "img_per_s", True))
        finally:
            args.compile = True
        ours["compile_error"] = failed
    return {"stock": stock, "ours": ours, "ratio": _ratio(ours.get("img_per_s"), stock.get("img_per_s"))}


def case_probe(args, device, data, arch, size, dname) -> dict:
    n = args.probe_images
    naive = _arm(lambda: best_of(args, lambda: stock_trainer_arm(args, device, data, arch, size, dname, n, freeze=True,
                                                                   epochs=args.probe_epochs), "total_s", False,
                                 total=True))
    ours = _arm(lambda: best_of(args, lambda: ours_probe_arm(args, device, data, arch, size, dname, n, False),
                                "total_s", False))
    fastx = _arm(lambda: best_of(args, lambda: ours_probe_arm(args, device, data, arch, size, dname, n, True),
                                 "total_s", False))
    if "error" not in naive:
        naive["img_per_s_per_epoch"] = round(naive["images"] * args.probe_epochs / naive["train_s"], 1)
    return {"naive": naive, "ours": ours, "ours_fastx": fastx, "epochs": args.probe_epochs,
            "ratio": _ratio(naive.get("total_s"), ours.get("total_s")),
            "ratio_fastx": _ratio(naive.get("total_s"), fastx.get("total_s"))}


def best_of(args, fn, key: str, higher: bool, total: bool = False) -> dict:
    runs = []
    for _ in range(max(1, args.repeats)):
        r = fn()
        if total:
            r["total_s"] = round(r["setup_s"] + r["train_s"], 2)
        runs.append(r)
    best = dict((max if higher else min)(runs, key=lambda r: r[key]))
    if len(runs) > 1:
        best["all_" + key] = [r[key] for r in runs]
        if "decode_s" in runs[0]:  # the one-time decode happens in the first pass (later ones hit the cache)
            best["decode_s"], best["decoded_splits"] = runs[0]["decode_s"], runs[0]["decoded_splits"]
    return best


def stock_extract(args, device, ds, arch, num_classes, size) -> dict:
    """The anchor's extract section: stock eval transforms, DataLoader workers, bf16 on CUDA."""
    memory = Memory(device)
    net = stock_model(arch, num_classes, args.seed)
    net.reset_classifier(0)
    net = net.to(device).eval()
    t0 = time.perf_counter()  # like ours: from the loader's creation to the last batch
    loader = torch.utils.data.DataLoader(stock_dataset(ds, size, train=False), batch_size=2 * args.batch_size,
                                         num_workers=args.workers, collate_fn=stock_collate,
                                         pin_memory=device.type == "cuda")
    n, t = 0, None
    with memory, torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        it = iter(loader)
        for i, b in enumerate(it):
            if i == 1:
                _sync(device)
                t, n = time.perf_counter(), 0
            net(b["pixel_values"].to(device, non_blocking=True))
            n += len(b["labels"])
            memory.note_workers()
        _sync(device)
        del it
    end = time.perf_counter()
    return {"img_per_s": round(n / (end - t), 1) if t else None, "wall_s": round(end - t0, 2),
            "img_per_s_end_to_end": round(len(ds) / (end - t0), 1), **memory.as_dict()}


def ours_extract(args, device, ds, backbone, cache_dir: str, input_path: str, workers: int) -> dict:
    from hf_transfer.data.decoded import DecodedImages
    from hf_transfer.methods.feature.cache import extract_features

    memory = Memory(device)
    decode_times: list[float] = []
    with memory, timed_calls(DecodedImages, "_build", decode_times):
        t0 = time.perf_counter()
        feats, _ = extract_features(backbone, ds, 2 * args.batch_size, device, input_path=input_path,
                                    decoded_cache_dir=cache_dir, num_workers=workers,
                                    amp_dtype=torch.bfloat16 if args.bf16 else None)
        _sync(device)
        wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "img_per_s_end_to_end": round(len(ds) / wall, 1),
            "decode_s": round(sum(decode_times), 2), "feature_dim": int(feats.shape[1]), **memory.as_dict()}


def case_extract(args, device, data, arch, size, dname) -> dict:
    from hf_transfer.models.backbones import load_backbone

    ds = data.train(dname, args.extract_images)
    k = data.num_classes(dname)
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
    return {"stock": stock, "ours_cold": cold, "ours_warm": warm, "ours_stock_path": shipped,
            "images": len(ds),
            "ratio_cold": _ratio(cold.get("img_per_s_end_to_end"), base),
            "ratio_warm": _ratio(warm.get("img_per_s_end_to_end"), base)}


CASES = {"finetune": case_finetune, "probe": case_probe, "extract": case_extract}


# ------------------------------------------------------------------------------------------
# report


def _g(r: dict, key: str):
    return "ERROR" if "error" in r else r.get(key)


def _mem(r: dict) -> str:
    if "error" in r:
        return "-"
    s = f"{r.get('peak_rss_main_mb')}+{r.get('workers_pss_mb')}"
    if r.get("peak_gpu_mb") is not None:
        s += f" / GPU {r['peak_gpu_mb']}"
    return s


def _table(title: str, columns: list[str], rows: list[list]) -> list[str]:
    """A markdown section: title, header, separator (one per column), one line per row of cells."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return [title, "", line(columns), "|" + "---|" * len(columns), *(line(r) for r in rows), ""]


def markdown(rows: list[dict], args) -> str:
    out = []
    ft = [r for r in rows if r["kind"] == "finetune" and "error" not in r]
    if ft:
        cells = []
        for r in ft:
            s, o = r["stock"], r["ours"]
            if "error" in o:
                opts, decode = "-", "-"
            else:
                opts = ", ".join(k for k, v in o["options"].items() if v is True) or "eager fp32"
                opts += f", aug {o['options']['augment_impl']}" + (" (compile failed: eager)" if "compile_error" in o
                                                                    else "")
                decode = f"{o['decode_s']} ({o['decoded_splits']} splits)"
            cells.append([f"{r['model']} @ {r['size']}", r["data"], _g(s, "img_per_s"), _g(o, "img_per_s"),
                          f"**{r['ratio']}x**", opts, decode, f"{_g(s, 'setup_s')} / {_g(o, 'setup_s')}",
                          _mem(s), _mem(o)])
        out += _table(f"### Fine-tuning: steady-state training img/s (batch {args.batch_size}, {args.steps} timed "
                      f"steps after {args.warmup} warm-up, {args.workers} loader workers)",
                      ["model @ px", "data", "stock img/s", "ours img/s", "ratio", "ours options",
                       "ours one-time decode s", "setup s stock / ours",
                       "memory MB: main peak RSS + workers PSS (GPU peak) stock", "ours"], cells)
    pr = [r for r in rows if r["kind"] == "probe" and "error" not in r]
    if pr:
        def parts(x):
            return "ERROR" if "error" in x else f"{x['total_s']} ({x['extract_s']} + {x['head_train_s']})"

        cells = [[f"{r['model']} @ {r['size']}", r["data"], _g(r["naive"], "images"),
                  f"{_g(r['naive'], 'total_s')} ({_g(r['naive'], 'img_per_s_per_epoch')})", parts(r["ours"]),
                  f"**{r['ratio']}x**", parts(r["ours_fastx"]), f"**{r['ratio_fastx']}x**", _mem(r["naive"]),
                  _mem(r["ours"]), _mem(r["ours_fastx"])] for r in pr]
        out += _table(f"### {args.probe_epochs}-epoch linear probe: total wall time, setup included",
                      ["model @ px", "data", "train images", "naive frozen Trainer s (per-epoch img/s)",
                       "ours: feature mode s (extract + head)", "ratio", "ours + fast extraction s (extract + head)",
                       "ratio", "memory MB naive", "ours", "ours+fastx"], cells)
    ex = [r for r in rows if r["kind"] == "extract" and "error" not in r]
    if ex:
        cells = [[f"{r['model']} @ {r['size']}", r["data"], r["images"],
                  f"{_g(r['stock'], 'img_per_s_end_to_end')} ({_g(r['stock'], 'img_per_s')})",
                  f"{_g(r['ours_cold'], 'img_per_s_end_to_end')} (decode {_g(r['ours_cold'], 'decode_s')} s)",
                  f"**{r['ratio_cold']}x**", _g(r["ours_warm"], "img_per_s_end_to_end"), f"**{r['ratio_warm']}x**",
                  _g(r["ours_stock_path"], "img_per_s_end_to_end"), _mem(r["stock"]), _mem(r["ours_cold"])]
                 for r in ex]
        out += _table(f"### Extraction: one inference pass (batch {2 * args.batch_size}), img/s end to end",
                      ["model @ px", "data", "images", "stock img/s (steady state)", "ours fast, cold: decode + pass",
                       "ratio", "ours fast, warm (decoded cache)", "ratio", "extract_features stock path, no workers",
                       "memory MB stock", "ours cold"], cells)
    for r in rows:
        errors = {"case": r["error"]} if "error" in r else {
            k: v.get("error") or v.get("compile_error") for k, v in r.items()
            if isinstance(v, dict) and (v.get("error") or v.get("compile_error"))}
        for arm, err in errors.items():
            out.append(f"- {r['kind']} {r['model']}@{r['size']} {r['data']} ({arm}): ERROR {err}")
    return "\n".join(out)


def header(env: dict, args, notes: dict, total_s: float) -> str:
    machine = env["gpu"] or f"CPU only, {env['cpu_count']} cores"
    cmd = " ".join(["OMP_NUM_THREADS=" + env["OMP_NUM_THREADS"]] if env["OMP_NUM_THREADS"] else [])
    cmd = (cmd + " python " + " ".join(sys.argv)).strip()
    return "\n".join([
        f"# Speed: stock recipe vs hf_transfer, side by side in one process ({machine})", "",
        f"Command: `{cmd}`", "",
        (f"Versions: torch {env['torch']}, torchvision {env['torchvision']}, transformers {env['transformers']}, "
         f"timm {env['timm']}, datasets {env['datasets']}, Python {env['python']}; {env['platform']}."), "",
        (f"Machine: {machine}; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, torch threads {env['torch_threads']}; "
         f"load average at start {_fmt_load(env.get('loadavg_start'))}, at end {_fmt_load(env.get('loadavg_end'))}. "
         f"Whole run {total_s:.0f} s" + (f" (JPEG generation {notes['jpeg_generation_s']} s)" if notes else "") + "."),
        "",
        (f"Settings: batch {args.batch_size}, {args.workers} DataLoader workers in every arm, {args.steps} timed "
         f"steps after {args.warmup} warm-up steps, ours bf16={args.bf16} channels_last={args.channels_last} "
         f"compile={args.compile} (the stock arms are the anchor recipe: bf16 on CUDA only), best of "
         f"{args.repeats}."),
        ""])


def _fmt_load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def environment(device: torch.device) -> dict:
    import datasets
    import timm
    import torchvision
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "timm": timm.__version__, "datasets": datasets.__version__,
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "loadavg_start": _loadavg()}


def _loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def _auto(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "on"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--cases", default=None, help=f"comma list of kind:arch@px:data (CPU default {CPU_CASES!r}; "
                                                 f"CUDA default {CUDA_CASES!r})")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (CPU 20, CUDA 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (CPU 3, CUDA 10)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=None, help="CPU 32, CUDA 128")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers, both arms (CPU 2, CUDA min(14, cpus - 2))")
    p.add_argument("--num_jpegs", "--num-jpegs", type=int, default=None, help="synthetic train JPEGs (CPU 384, CUDA 8192)")
    p.add_argument("--train_images", "--train-images", type=int, default=None,
                   help="fine-tuning: at most this many training images (CPU 2048, CUDA all)")
    p.add_argument("--probe_images", "--probe-images", type=int, default=None, help="linear probe train images "
                   "(CPU 1024, CUDA 8192)")
    p.add_argument("--probe_epochs", "--probe-epochs", type=int, default=10)
    p.add_argument("--eval_images", "--eval-images", type=int, default=None,
                   help="test images ours decodes / extracts at setup (CPU 256, CUDA 1024)")
    p.add_argument("--extract_images", "--extract-images", type=int, default=None, help="CPU 1024, CUDA 8192")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    p.add_argument("--channels_last", "--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="ours only; auto: on for CUDA")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="ours only; auto: on for CUDA")
    p.add_argument("--repeats", type=int, default=1, help="passes per arm; the best is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen_processes", type=int, default=None, help="processes generating JPEGs")
    p.add_argument("--out", default=None, help="write JSON here and the markdown tables next to it (.md)")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    cpus = os.cpu_count() or 2
    defaults = {"cases": CUDA_CASES if cuda else CPU_CASES, "train_images": None if cuda else 2048,
                "steps": 50 if cuda else 20, "warmup": 10 if cuda else 3, "batch_size": 128 if cuda else 32,
                "workers": min(14, max(1, cpus - 2)) if cuda else 2, "num_jpegs": 8192 if cuda else 384,
                "probe_images": 8192 if cuda else 1024, "eval_images": 1024 if cuda else 256,
                "extract_images": 8192 if cuda else 1024, "gen_processes": min(cpus, 16)}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.bf16 = _auto(args.bf16, cuda)
    args.channels_last = _auto(args.channels_last, cuda)
    args.compile = _auto(args.compile, cuda)
    if args.bf16 and not cuda:
        raise SystemExit("--bf16 on needs CUDA here (the Trainer's bf16 on CPU is not what the anchors measured)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") is None:
        print("note: OMP_NUM_THREADS is not set; on a shared CPU set OMP_NUM_THREADS=1", file=sys.stderr)
    import transformers

    transformers.logging.set_verbosity_error()
    env = environment(device)
    print(f"# speed benchmark on {env['gpu'] or 'cpu'} ({env['cpu_count']} CPUs, torch {env['torch']}, "
          f"transformers {env['transformers']}, timm {env['timm']}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']})",
          flush=True)
    work = tempfile.mkdtemp(prefix="hf_transfer_bench_speed_")
    data = Data(args, work)
    rows: list[dict] = []
    t_start = time.perf_counter()
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
            print(f"{case}: {_summary(row)} [{row['case_s']} s]", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env["loadavg_end"] = _loadavg()
    table = markdown(rows, args)
    head = header(env, args, data.notes, time.perf_counter() - t_start)
    usage = {"ru_maxrss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "ru_maxrss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}
    print()
    print(table)
    print(f"whole run: {round(time.perf_counter() - t_start, 1)} s; peak RSS (getrusage) self "
          f"{usage['ru_maxrss_self_mb']} MB, largest child {usage['ru_maxrss_children_mb']} MB")
    result = {"env": env, "args": vars(args), "data": data.notes, "rows": rows, "rusage": usage,
              "total_s": round(time.perf_counter() - t_start, 1), "markdown": table,
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        md = os.path.splitext(args.out)[0] + ".md"
        with open(md, "w") as f:
            f.write(head + "\n" + table + "\n")
        print(f"wrote {args.out} and {md}")
    return result


def _summary(row: dict) -> str:
    if "error" in row:
        return "ERROR " + row["error"]
    if row["kind"] == "finetune":
        return (f"stock {_g(row['stock'], 'img_per_s')} img/s, ours {_g(row['ours'], 'img_per_s')} img/s "
                f"(x{row['ratio']}; ours decode once {_g(row['ours'], 'decode_s')} s)")
    if row["kind"] == "probe":
        return (f"naive {_g(row['naive'], 'total_s')} s, ours {_g(row['ours'], 'total_s')} s (x{row['ratio']}), "
                f"ours+fast extraction {_g(row['ours_fastx'], 'total_s')} s (x{row['ratio_fastx']})")
    return (f"stock {_g(row['stock'], 'img_per_s_end_to_end')} img/s, ours cold "
            f"{_g(row['ours_cold'], 'img_per_s_end_to_end')} (x{row['ratio_cold']}), warm "
            f"{_g(row['ours_warm'], 'img_per_s_end_to_end')} (x{row['ratio_warm']})")


if __name__ == "__main__":
    main()
