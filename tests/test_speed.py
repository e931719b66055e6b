"""Speed options (channels_last, torch.compile for extraction), the memory-mapped feature cache and
decoding with worker processes: correctness only, never timing."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch

from hf_transfer.config import arguments_from_dict
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.feature.cache import FeatureCache, shard_bounds
from hf_transfer.methods.feature.extract import extract_features
from hf_transfer.models.backbones import load_backbone
from hf_transfer.models.speed import (
    compile_options,
    is_convolutional,
    normalize_auto_flag,
    resolve_cpu_threads,
    set_memory_format,
    usable_cores,
    use_channels_last,
)
from hf_transfer.training.run import prepare_run, run_transfer

from conftest import random_png_dataset, tiny_args

TARGET = "builtin:digits-handwritten"
NAMES = ["a", "b", "c"]


def tiny(tmp_path, **overrides) -> dict:
    caches = {"decoded_cache_dir": str(tmp_path / "decoded"), "feature_cache_dir": str(tmp_path / "features")}
    return tiny_args(tmp_path, **{"max_steps": 3, "max_train_samples": 48, **caches, **overrides})


def _images(n: int, h: int = 30, w: int = 40) -> datasets.Dataset:
    return random_png_dataset(n, h, w, NAMES)


# -- channels_last -----------------------------------------------------------------------------


def test_channels_last_values_and_auto():
    assert [normalize_auto_flag(v) for v in (True, "True", "auto", "off", False, "1")] == [
        "true",
        "true",
        "auto",
        "false",
        "false",
        "true",
    ]
    with pytest.raises(TransferConfigError, match="channels_last"):
        normalize_auto_flag("sometimes")
    with pytest.raises(TransferConfigError, match="channels_last"):
        arguments_from_dict(
            {"mode": "task", "backbone": "test_resnet", "target": TARGET, "output_dir": "x", "channels_last": "maybe"}
        )
    convnet = load_backbone("test_resnet", NAMES, image_size=32).model
    vit = load_backbone("test_vit", NAMES).model
    assert is_convolutional(convnet) and not is_convolutional(vit)
    # auto: on for a convnet on CUDA or the CPU (the device is only inspected, nothing runs on it), never a ViT
    assert use_channels_last("auto", convnet, "cuda") and use_channels_last("auto", convnet, "cpu")
    assert not use_channels_last("auto", convnet, "mps")
    assert not use_channels_last("auto", vit, "cuda") and not use_channels_last("auto", vit, "cpu")
    assert use_channels_last("true", vit, "cpu") and not use_channels_last("false", convnet, "cuda")


def test_channels_last_same_logits_on_cpu():
    torch.manual_seed(0)
    model = load_backbone("test_resnet", NAMES, image_size=32).model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(pixel_values=x).logits
        set_memory_format(model, True)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
        got = model(pixel_values=x.contiguous(memory_format=torch.channels_last)).logits
        set_memory_format(model, False)
        assert conv.weight.is_contiguous()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_channels_last_run_is_recorded_and_trains_the_same(tmp_path):
    """A task run with channels_last=true (checkpoints included) matches the default run."""
    run_transfer(
        *arguments_from_dict(
            tiny(
                tmp_path,
                mode="task",
                channels_last=True,
                save_strategy="steps",
                save_steps=2,
                output_dir=str(tmp_path / "on"),
            )
        )
    )
    saved = json.loads((tmp_path / "on" / "results.json").read_text())
    assert saved["arguments"]["channels_last"] == "true" and saved["speed"]["channels_last"] is True
    assert os.path.isdir(tmp_path / "on" / "checkpoint-2")  # safetensors checkpoint of NHWC weights
    off = run_transfer(
        *arguments_from_dict(tiny(tmp_path, mode="task", channels_last=False, output_dir=str(tmp_path / "off")))
    )
    assert off["speed"]["channels_last"] is False and off["arguments"]["channels_last"] == "false"
    auto = run_transfer(*arguments_from_dict(tiny(tmp_path, mode="task", output_dir=str(tmp_path / "auto"))))
    assert auto["speed"]["channels_last"] is True and "channels_last" not in auto["arguments"]  # auto: a convnet
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "on" / "model.safetensors")), load_file(str(tmp_path / "off" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        # float reordering (NHWC kernels) grows through 3 SGD steps to ~3e-4; a layout bug would be O(1)
        torch.testing.assert_close(a[key], b[key], rtol=1e-2, atol=1e-3, msg=key)


def test_extraction_channels_last_and_compile_give_the_same_features(tmp_path):
    torch.manual_seed(0)
    backbone = load_backbone("test_resnet", NAMES, image_size=32, crop_pct=0.875)
    ds = _images(6)
    ref, _ = extract_features(backbone, ds, batch_size=4)
    set_memory_format(backbone.model, True)
    try:
        got, _ = extract_features(backbone, ds, batch_size=4, channels_last=True, compile_options={"backend": "eager"})
    finally:
        set_memory_format(backbone.model, False)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # the extraction pass compiles exactly when TrainingArguments.torch_compile says so
    plain = SimpleNamespace(torch_compile=False, torch_compile_backend=None, torch_compile_mode=None)
    assert compile_options(plain) is None
    on = SimpleNamespace(torch_compile=True, torch_compile_backend="eager", torch_compile_mode="default")
    assert compile_options(on) == {"backend": "eager", "mode": "default"}


# -- the memory-mapped feature cache ----------------------------------------------------------------


def test_feature_cache_is_memory_mapped(tmp_path):
    torch.manual_seed(0)
    backbone = load_backbone("test_resnet", NAMES, image_size=32, crop_pct=0.875)
    ds = _images(7)
    cache = FeatureCache(str(tmp_path / "f"))
    feats, labels, path = cache.get_or_compute(backbone, ds, "train", batch_size=3, weights_hash="w")
    mm, _ = FeatureCache.load(path)
    assert isinstance(mm, np.memmap) and mm.shape == (7, backbone.feature_dim)
    ref, ref_y = extract_features(backbone, ds, batch_size=5)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == ref_y.tolist()
    meta = FeatureCache.meta(path)
    assert meta["world_size"] == 1 and [(s["start"], s["stop"], s["rows_extracted"]) for s in meta["shards"]] == [
        (0, 7, 7)
    ]
    assert sorted(os.listdir(tmp_path / "f")) == [os.path.basename(path)]  # no staging litter
    # a hit returns tensors over the file's pages (no copy into RAM)
    again, _, _ = cache.get_or_compute(backbone, ds, "train", batch_size=3, weights_hash="w")
    assert cache.hits == 1 and torch.equal(again, feats)


def test_feature_mode_reads_rows_from_the_memmap(tmp_path):
    run = prepare_run(*arguments_from_dict(tiny(tmp_path, mode="feature")))
    train = run.trainer.train_dataset
    assert isinstance(train.memmap, np.memmap)
    assert train.features.data_ptr() == train.memmap.ctypes.data  # the tensor IS the memmap, not a copy
    batch = next(iter(run.trainer.get_train_dataloader()))
    assert batch["features"].shape == (16, run.backbone.feature_dim) and batch["labels"].dtype == torch.long
    rows = train.__getitems__([3, 0, 5])
    torch.testing.assert_close(
        torch.stack([r["features"] for r in rows]), torch.from_numpy(np.array(train.memmap[[3, 0, 5]]))
    )


def test_shard_bounds_cover_every_row_once():
    for n in (0, 1, 5, 48):
        for w in (1, 2, 3):
            bounds = [shard_bounds(n, r, w) for r in range(w)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


# -- decoding with worker processes -------------------------------------------------------------


def test_mode_decodes_with_dataloader_workers(tmp_path, monkeypatch):
    from hf_transfer.data.transforms import DataConfig
    from hf_transfer.training.modes import common

    seen = []
    real = common.DecodedImages

    def spy(*args, **kwargs):
        seen.append(kwargs.get("num_workers"))
        return real(*args, chunk_size=2, **kwargs)

    monkeypatch.setattr(common, "DecodedImages", spy)
    ds = _images(7, 24, 30)

    def fake_mode(workers, cache):
        training_args = SimpleNamespace(
            dataloader_num_workers=workers,
            device=torch.device("cpu"),
            main_process_first=lambda desc: contextlib.nullcontext(),
        )
        backbone = SimpleNamespace(data_config=DataConfig(input_size=(3, 16, 16)))
        return SimpleNamespace(
            training_args=training_args,
            backbone=backbone,
            args=SimpleNamespace(
                decoded_cache_dir=str(tmp_path / cache), decode_cache_format="raw", decode_cache_quality=90
            ),
        )

    for kind in ("train", "eval"):
        one = common._decoded(fake_mode(0, "one"), ds, kind)
        two = common._decoded(fake_mode(2, "two"), ds, kind)
        assert one.decoded and two.decoded
        assert np.array_equal(np.asarray(one.images), np.asarray(two.images))
        assert np.array_equal(one.image_sizes, two.image_sizes) and np.array_equal(one.labels, two.labels)
    assert seen == [0, 2, 0, 2]


def test_features_on_device_trains_the_same_head(tmp_path):
    """The device-resident path (forced on, on CPU) gathers the same rows in the same order as the
    memmap path: the trained head and the metrics are the same; a batch carries only row indices."""
    from hf_transfer.models.speed import use_features_on_device
    from hf_transfer.training.modes.feature import RowIndexDataset

    assert use_features_on_device("auto", 10, "cpu") is False and use_features_on_device(True, 10, "cpu") is True
    with pytest.raises(TransferConfigError, match="features_on_device"):
        arguments_from_dict(tiny(tmp_path, mode="feature", features_on_device="gpu"))
    runs = {}
    for flag in ("true", "false"):
        args, targs = arguments_from_dict(
            tiny(tmp_path, mode="feature", features_on_device=flag, max_steps=6, output_dir=str(tmp_path / flag))
        )
        run = prepare_run(args, targs)
        train = run.trainer.train_dataset
        assert isinstance(train, RowIndexDataset) == (flag == "true")
        if flag == "true":
            batch = next(iter(run.trainer.get_train_dataloader()))
            assert set(batch) == {"row_index"} and run.mode.device_table[0].shape[0] == len(train)
        results = run_transfer(args, targs)
        assert results["features_on_device"] is (flag == "true")
        from safetensors.torch import load_file

        runs[flag] = (load_file(os.path.join(tmp_path, flag, "model.safetensors")), results["metrics"])
    for key, value in runs["true"][0].items():
        torch.testing.assert_close(value, runs["false"][0][key], msg=key)
    assert runs["true"][1] == runs["false"][1]


def test_auto_bf16_only_on_a_bf16_cuda_device(tmp_path, monkeypatch):
    from hf_transfer.config import resolve_precision

    args, targs = arguments_from_dict(tiny(tmp_path, mode="task"))
    assert args.auto_bf16 and not targs.bf16 and targs.mixed_precision == "no"  # CPU: fp32

    def training(**kw):  # TrainingArguments on a GPU machine (cannot be built without one)
        return SimpleNamespace(**{"bf16": False, "fp16": False, "use_cpu": False, "mixed_precision": "no", **kw})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    got = resolve_precision(args, training())
    assert got.bf16 and got.mixed_precision == "bf16"
    # the user's choice
    assert resolve_precision(args, training(fp16=True, mixed_precision="fp16")).mixed_precision == "fp16"
    assert not resolve_precision(args, training(use_cpu=True)).bf16
    args.auto_bf16 = False
    assert not resolve_precision(args, training()).bf16
    args.auto_bf16 = True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert not resolve_precision(args, training()).bf16


def test_precision_and_jpeg_decoder_are_recorded(tmp_path):
    results = run_transfer(
        *arguments_from_dict(tiny(tmp_path, mode="feature", max_steps=2, decode_cache_format="jpeg"))
    )
    assert results["speed"]["mixed_precision"] == "no"
    assert results["speed"]["decode_cache_format"] == "jpeg" and results["speed"]["jpeg_decoder"] == "cpu"


def test_cpu_threads_follow_the_cores_and_what_the_workers_do(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert usable_cores() == 8
    assert resolve_cpu_threads("auto", "fast", 4)[0] == 8  # fast path: the workers only copy uint8 rows
    assert resolve_cpu_threads("auto", "stock", 3) == (5, "8 cores - 3 PIL loader workers")
    assert resolve_cpu_threads("auto", "stock", 20)[0] == 1  # never below one thread
    assert resolve_cpu_threads("auto", "fast", 0, local_processes=2)[0] == 4  # two DDP processes share the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_cpu_threads("auto", "fast", 0) == (3, "OMP_NUM_THREADS")  # the user's setting wins
    assert resolve_cpu_threads("6", "fast", 0) == (6, "cpu_threads")
    for bad in ("0", "-2", "many"):
        with pytest.raises(TransferConfigError, match="cpu_threads"):
            resolve_cpu_threads(bad, "fast", 0)


def test_cpu_threads_are_set_and_recorded(tmp_path):
    before = torch.get_num_threads()
    try:
        results = run_transfer(*arguments_from_dict(tiny(tmp_path, mode="task", cpu_threads="1")))
        assert results["speed"]["cpu_threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(TransferConfigError, match="cpu_threads='none'"):
        arguments_from_dict(tiny(tmp_path, mode="task", cpu_threads="none"))


def test_threaded_decode_gives_the_bytes_of_one_thread(tmp_path, monkeypatch):
    """num_workers=0 decodes in torch.get_num_threads() threads, chunks a few ahead: same cache as one thread."""
    from hf_transfer.data import decoded as decoded_module
    from hf_transfer.data.decoded import DecodedImages
    from hf_transfer.data.transforms import DataConfig

    ds = _images(23, 24, 30)
    cfg = DataConfig(input_size=(3, 16, 16))
    used = []
    real = decoded_module.in_threads
    monkeypatch.setattr(
        decoded_module, "in_threads", lambda chunks, n: used.append((n, len(chunks))) or real(chunks, n)
    )
    before = torch.get_num_threads()
    try:
        for kind in ("train", "eval"):
            torch.set_num_threads(1)
            one = DecodedImages(ds, cfg, kind, cache_dir=tmp_path / "one")
            torch.set_num_threads(3)
            three = DecodedImages(ds, cfg, kind, cache_dir=tmp_path / "three", chunk_size=4)
            assert one.decoded and three.decoded
            assert np.array_equal(np.asarray(one.images), np.asarray(three.images))
            assert np.array_equal(one.image_sizes, three.image_sizes)
    finally:
        torch.set_num_threads(before)
    # one thread: one chunk of 256 rows; three threads: chunks of ceil(23 / (4 * 3)) = 2 rows, 12 of them
    assert used == [(1, 1), (3, 12), (1, 1), (3, 12)]


def test_a_busy_machine_is_named_not_silently_given_fewer_threads(monkeypatch):
    from hf_transfer.models.speed import busy_machine_note

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    assert "OMP_NUM_THREADS=1" in busy_machine_note(2) and "load average 3.0 on 2 cores" in busy_machine_note(2)
    assert busy_machine_note(1) is None  # one thread waits for nobody
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.2, 0.1))
    assert busy_machine_note(2) is None
