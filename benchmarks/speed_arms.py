"""The arms of the speed benchmark (see bench_speed.py): the stock recipe (plain datasets + torchvision +
transformers.Trainer, as a user writes it) and ours (hf_transfer), each timed and measured for memory."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import torch
from _measure import mb as _mb
from _measure import reset_peak as _reset_peak
from _measure import status_kb as _status_kb
from _measure import sync as _sync

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
        self.gpu_mb = (
            round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1) if self.device.type == "cuda" else None
        )
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_main_mb": self.main_mb, "workers_pss_mb": self.workers_mb, "peak_gpu_mb": self.gpu_mb}


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
    out = {
        "output_dir": output_dir,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-3,
        "bf16": args.bf16,
        "use_cpu": not cuda,
        "dataloader_num_workers": args.workers,
        "dataloader_pin_memory": cuda,
        "dataloader_persistent_workers": args.workers > 0,
        "dataloader_drop_last": True,
        "remove_unused_columns": False,
        "save_strategy": "no",
        "logging_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": args.seed,
    }
    out.update(over)
    if not out["dataloader_num_workers"]:
        out["dataloader_persistent_workers"] = False
    return out


# ------------------------------------------------------------------------------------------
# the stock recipe


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
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["label"] for e in examples]),
    }


def stock_model(arch: str, num_classes: int, seed: int):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def stock_trainer_arm(args, device, data, arch, size, dname, n, *, freeze: bool, epochs: int | None, threads: int):
    """The stock Trainer; fine-tuning (``max_steps``) or the naive frozen linear probe (``epochs``, then its
    test accuracy, untimed). ``threads``: the training process's intra-op threads for this arm."""
    from transformers import Trainer, TrainingArguments

    torch.set_num_threads(threads)
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
    trainer = Trainer(
        model=TimmForTrainer(net),
        args=targs,
        train_dataset=stock_dataset(ds, size),
        data_collator=stock_collate,
        callbacks=[clock],
    )
    _quiet(trainer)
    setup_s = time.perf_counter() - t0
    with memory:
        t1 = time.perf_counter()
        trainer.train()
        _sync(device)
        train_s = time.perf_counter() - t1
    out = {
        "setup_s": round(setup_s, 2),
        "train_s": round(train_s, 2),
        "images": len(ds),
        "threads": threads,
        **memory.as_dict(),
    }
    out.update(_throughput(args, clock.stamps, epochs, len(ds)))
    if epochs:  # the probe: what it reached (not timed)
        test = stock_dataset(data.test(dname, args.eval_images), size, train=False)
        pred = trainer.predict(test)
        out["accuracy"] = round(float((pred.predictions.argmax(-1) == pred.label_ids).mean()), 4)
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
    return {
        "steps": len(stamps),
        "timed_steps": steps,
        "img_per_s": round(steps * args.batch_size / dt, 1),
        "step_ms": round(1000 * dt / steps, 2),
    }


# ------------------------------------------------------------------------------------------
# ours (hf_transfer)


def _ours_arguments(args, device, data, arch, size, dname, mode, n, out_dir, **over):
    """(TransferArguments, TrainingArguments) of ours; ``over`` may hold fields of either."""
    import dataclasses

    from transformers import TrainingArguments

    from hf_transfer.config import arguments_from_dict

    training_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    cfg = {
        "mode": mode,
        "backbone": arch,
        "target": data.spec(dname),
        "image_size": size,
        "crop_pct": CROP_PCT,
        "max_train_samples": n,
        "max_eval_samples": args.eval_images,
        "decoded_cache_dir": os.path.join(data.work, "decoded"),
        "overwrite_output_dir": True,
    }  # every repeat and case reuses its arm's folder
    if mode == "feature":  # options of the feature cache are refused in other modes
        cfg.update(feature_cache_dir=os.path.join(out_dir, "features"), feature_batch_size=2 * args.batch_size)
    cfg.update({k: v for k, v in over.items() if k not in training_fields})
    cfg.update(_training_args(args, device, out_dir, **{k: v for k, v in over.items() if k in training_fields}))
    if cfg.get("head_solver") == "lbfgs":  # a full-batch solve: no learning rate (refused)
        cfg.pop("learning_rate")
    return arguments_from_dict(cfg)


def ours_finetune_arm(args, device, data, arch, size, dname, n, workers: int):
    from hf_transfer.data.decoded import DecodedImages
    from hf_transfer.training.run import prepare_run

    memory = Memory(device)
    decode_times: list[float] = []
    t0 = time.perf_counter()
    targs = _ours_arguments(
        args,
        device,
        data,
        arch,
        size,
        dname,
        "task",
        n,
        os.path.join(data.work, "out_ours"),
        input_path="fast",
        augment="standard",
        max_steps=args.warmup + args.steps,
        channels_last=args.channels_last,
        dataloader_num_workers=workers,
    )
    clock = make_clock(device, memory)
    torch.manual_seed(args.seed)
    with timed_calls(DecodedImages, "_build", decode_times):
        run = prepare_run(*targs, callbacks=[clock])
    _quiet(run.trainer)
    options = {
        "bf16": args.bf16,
        "channels_last": bool(run.model.channels_last),  # resolved (auto: a convnet)
        "compile": args.compile,
        "augment_impl": "grid" if device.type == "cuda" else "loop",
    }
    if args.compile:
        run.model.classifier.timm_model.compile()  # in place: the wrapper calls timm_model(...)
    setup_s = time.perf_counter() - t0
    with memory:
        t1 = time.perf_counter()
        run.trainer.train()
        _sync(device)
        train_s = time.perf_counter() - t1
    out = {
        "setup_s": round(setup_s, 2),
        "decode_s": round(sum(decode_times), 2),
        "decoded_splits": len(decode_times),
        "train_s": round(train_s, 2),
        "images": len(run.trainer.train_dataset),
        "threads": torch.get_num_threads(),
        "workers": workers,
        "options": options,
        **memory.as_dict(),
    }
    out.update(_throughput(args, clock.stamps, None, None))
    del run
    return out


def ours_probe_arm(args, device, data, arch, size, dname, n, solver: str):
    """Feature mode as shipped (fast input path, decode in-process threads, features streamed to a
    memory-mapped cache, cold caches in every call) with the head trained by ``solver``: ``sgd`` (the
    Trainer, ``--probe_epochs`` epochs, as the naive arm) or ``lbfgs`` (one full-batch solve). Total wall
    time, setup included; then the test accuracy (untimed)."""
    from hf_transfer.methods.feature import cache as features
    from hf_transfer.training.fit import final_metrics
    from hf_transfer.training.run import prepare_run

    memory = Memory(device)
    extract_times: list[float] = []
    # a fresh folder per call: feature (and decoded) caches must start empty in every repeat
    out_dir = tempfile.mkdtemp(prefix=f"out_probe_{solver}_", dir=data.work)
    over = {"head_solver": solver} if solver == "lbfgs" else {"num_train_epochs": args.probe_epochs}
    t0 = time.perf_counter()
    targs = _ours_arguments(
        args,
        device,
        data,
        arch,
        size,
        dname,
        "feature",
        n,
        out_dir,
        dataloader_num_workers=0,
        decoded_cache_dir=os.path.join(out_dir, "decoded"),
        **over,
    )
    clock = make_clock(device, memory)
    torch.manual_seed(args.seed)
    with memory:
        with timed_calls(features.FeatureCache, "get_or_compute", extract_times):
            run = prepare_run(*targs, callbacks=[clock])
        _quiet(run.trainer)
        setup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        run.trainer.train()
        _sync(device)
        train_s = time.perf_counter() - t1
    n_train = len(run.trainer.train_dataset)
    accuracy = final_metrics(run.trainer, {"target": run.eval_sets["target"]}, len(run.data.label_names))["target"]
    solved = run.mode.solver_info or {}
    threads = torch.get_num_threads()
    del run
    return {
        "setup_s": round(setup_s, 2),
        "extract_s": round(sum(extract_times), 2),
        "head_train_s": round(train_s, 2),
        "total_s": round(setup_s + train_s, 2),
        "images": n_train,
        "threads": threads,
        "solver": solver,
        "lbfgs_iterations": solved.get("iterations"),
        "accuracy": round(float(accuracy["accuracy"]), 4),
        **memory.as_dict(),
    }


# ------------------------------------------------------------------------------------------
# extraction (one inference pass)


def stock_extract(args, device, ds, arch, num_classes, size) -> dict:
    """The anchor's extract section: stock eval transforms, DataLoader workers, bf16 on CUDA."""
    memory = Memory(device)
    net = stock_model(arch, num_classes, args.seed)
    net.reset_classifier(0)
    net = net.to(device).eval()
    t0 = time.perf_counter()  # like ours: from the loader's creation to the last batch
    loader = torch.utils.data.DataLoader(
        stock_dataset(ds, size, train=False),
        batch_size=2 * args.batch_size,
        num_workers=args.workers,
        collate_fn=stock_collate,
        pin_memory=device.type == "cuda",
    )
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
    return {
        "img_per_s": round(n / (end - t), 1) if t else None,
        "wall_s": round(end - t0, 2),
        "img_per_s_end_to_end": round(len(ds) / (end - t0), 1),
        **memory.as_dict(),
    }


def ours_extract(args, device, ds, backbone, cache_dir: str, input_path: str, workers: int) -> dict:
    from hf_transfer.data.decoded import DecodedImages
    from hf_transfer.methods.feature.extract import extract_features
    from hf_transfer.models.speed import use_channels_last

    channels_last = use_channels_last(args.channels_last, backbone.model, device)  # as feature mode resolves it
    memory = Memory(device)
    decode_times: list[float] = []
    with memory, timed_calls(DecodedImages, "_build", decode_times):
        t0 = time.perf_counter()
        feats, _ = extract_features(
            backbone,
            ds,
            2 * args.batch_size,
            device,
            input_path=input_path,
            decoded_cache_dir=cache_dir,
            num_workers=workers,
            amp_dtype=torch.bfloat16 if args.bf16 else None,
            channels_last=channels_last,
        )
        _sync(device)
        wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        "img_per_s_end_to_end": round(len(ds) / wall, 1),
        "decode_s": round(sum(decode_times), 2),
        "feature_dim": int(feats.shape[1]),
        "channels_last": channels_last,
        **memory.as_dict(),
    }
