"""Disks fill up: "no space left on PATH, N MB needed", never SIGBUS or torch's
``unexpected pos``, and the last complete checkpoint (or export) stays as it was.

Real full disks are small tmpfs mounts (root only: skipped with the reason otherwise); the same paths are
also driven by patching ``shutil.disk_usage`` / ``os.posix_fallocate`` so they run anywhere."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import datasets
import pytest
import torch

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.decoded import DecodedImages
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import NoSpaceError
from hf_transfer.methods.feature.cache import FeatureCache
from hf_transfer.models.backbones import load_backbone
from hf_transfer.runtime import disk
from hf_transfer.training.checkpoints import checkpoint_problem, last_complete_checkpoint
from hf_transfer.training.run import run_transfer

from conftest import random_png_dataset, tiny_args

MB = 2**20
Usage = namedtuple("Usage", "total used free")


@contextlib.contextmanager
def tiny_tmpfs(folder, size: str):
    """A tmpfs of ``size`` mounted on ``folder`` for the block (skips the test where mounting is not allowed)."""
    os.makedirs(folder, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _images(n: int, h: int, w: int) -> datasets.Dataset:
    return random_png_dataset(n, h, w, ["a", "b"])


def _assert_names(err: pytest.ExceptionInfo, path) -> None:
    text = str(err.value)
    assert text.startswith(f"no space left on {path}, ") and " MB needed" in text, text
    assert err.value.errno == errno.ENOSPC


# -- memory-mapped caches -----------------------------------------------------------------------------

_DECODE_ON_FULL_DISK = """
import io
import datasets
import numpy as np
from PIL import Image
from hf_transfer.runtime import disk
from hf_transfer.data.decoded import DecodedImages
from hf_transfer.data.transforms import DataConfig
if {skip_precheck!r}:  # another writer filled the disk after the check: only the allocation can catch it
    disk.ensure_free_space = lambda path, nbytes: None
cells = []
for k in range(40):
    buf = io.BytesIO()
    Image.fromarray(np.full((96, 96, 3), k, dtype=np.uint8)).save(buf, format="PNG")
    cells.append({{"bytes": buf.getvalue(), "path": None}})
ds = datasets.Dataset.from_dict({{"image": cells}}, features=datasets.Features({{"image": datasets.Image()}}))
cfg = DataConfig(input_size=(3, 96, 96), crop_pct=1.0)
DecodedImages(ds, cfg, "eval", cache_dir={cache!r}, with_labels=False)
"""


@pytest.mark.parametrize("skip_precheck", [False, True], ids=["free-space check", "allocation"])
def test_decoded_cache_on_a_full_tmpfs_is_an_error_naming_it_not_sigbus(tmp_path, skip_precheck):
    """40 images of 96x96 need 1.1 MB in a 1 MB tmpfs: writing them through the memmap was SIGBUS (exit 135)."""
    with tiny_tmpfs(tmp_path / "disk", "1m") as mount:
        cache = str(mount / "decoded")
        script = _DECODE_ON_FULL_DISK.format(cache=cache, skip_precheck=skip_precheck)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, f"exit {done.returncode} (SIGBUS is -7): {done.stderr[-2000:]}"
        assert f"NoSpaceError: no space left on {cache}, 2 MB needed" in done.stderr, done.stderr[-2000:]
        assert [e for e in os.listdir(cache) if not e.startswith(".staging-")] == []  # no entry to trust
        assert not os.listdir(cache)  # the staging folder went too: the space is free again


def test_decoded_cache_refused_when_the_allocation_fails(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk.os, "posix_fallocate", full, raising=False)
    with pytest.raises(NoSpaceError) as err:
        DecodedImages(_images(8, 40, 40), DataConfig(input_size=(3, 40, 40), crop_pct=1.0), "eval", cache_dir=tmp_path)
    _assert_names(err, tmp_path)
    assert os.listdir(tmp_path) == []


def test_feature_cache_refused_before_extraction_when_the_disk_is_short(tmp_path, monkeypatch):
    torch.manual_seed(0)
    backbone = load_backbone("test_resnet", ["a", "b"], image_size=16, crop_pct=1.0)
    cache = FeatureCache(str(tmp_path / "features"))
    extracted = []
    monkeypatch.setattr(FeatureCache, "_extract_into", lambda *a, **k: extracted.append(1))
    real = shutil.disk_usage
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: Usage(real(p).total, real(p).total, 1000))
    with pytest.raises(NoSpaceError) as err:
        cache.get_or_compute(backbone, _images(6, 16, 16), "train", batch_size=4, weights_hash="w")
    _assert_names(err, cache.cache_dir)
    assert not extracted  # refused before the long work


def test_feature_cache_allocation_failure_names_the_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    backbone = load_backbone("test_resnet", ["a", "b"], image_size=16, crop_pct=1.0)
    cache = FeatureCache(str(tmp_path / "features"))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk.os, "posix_fallocate", full, raising=False)
    with pytest.raises(NoSpaceError) as err:
        cache.get_or_compute(backbone, _images(6, 16, 16), "train", batch_size=4, weights_hash="w")
    _assert_names(err, cache.cache_dir)
    assert os.listdir(cache.cache_dir) == []  # no entry, no staging folder


# -- checkpoints and exports --------------------------------------------------------------------------


def _checkpoint_run(tmp_path, output_dir: str) -> dict:
    """4 steps, a checkpoint every 2 (the project keeps the newest only), the checkpoint 1.5 MB."""
    args = tiny_args(tmp_path, mode="task", method="full", save_strategy="steps", save_steps=2, output_dir=output_dir)
    return run_transfer(*arguments_from_dict(args))


def _assert_checkpoint_2_intact(output_dir: str) -> None:
    kept = os.path.join(output_dir, "checkpoint-2")
    assert checkpoint_problem(kept) is None
    assert last_complete_checkpoint(output_dir) == kept
    from safetensors.torch import load_file

    assert load_file(os.path.join(kept, "model.safetensors"))  # the weights read back whole


@pytest.mark.parametrize("when", ["before writing", "while writing"])
def test_checkpoint_on_a_full_tmpfs_names_the_folder_and_keeps_the_last_one(tmp_path, monkeypatch, when):
    """A 2.5 MB tmpfs holds one 1.5 MB checkpoint, not two: the second is refused by the free-space check or,
    with the check skipped (the disk filled meanwhile), fails while written (torch: ``unexpected pos``)."""
    if when == "while writing":
        from hf_transfer.training import trainer

        monkeypatch.setattr(trainer, "ensure_free_space", lambda path, nbytes: None)
    with tiny_tmpfs(tmp_path / "disk", "2500k") as mount:
        output_dir = str(mount / "out")
        with pytest.raises(NoSpaceError) as err:
            _checkpoint_run(tmp_path, output_dir)
        _assert_names(err, os.path.join(output_dir, "checkpoint-4"))
        _assert_checkpoint_2_intact(output_dir)


def test_checkpoint_write_failure_from_torch_is_named_when_the_disk_is_full(tmp_path, monkeypatch):
    """torch's own words for a full disk (``unexpected pos``) become the no-space error; the earlier
    checkpoint stays."""
    output_dir = str(tmp_path / "out")
    real_save, real_usage = torch.save, shutil.disk_usage
    full = []

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            full.append(str(f))
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1152 vs 1046")
        return real_save(obj, f, *args, **kwargs)

    def usage(path):
        u = real_usage(path)
        return Usage(u.total, u.total, 4096) if full else u

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(disk.shutil, "disk_usage", usage)
    with pytest.raises(NoSpaceError) as err:
        _checkpoint_run(tmp_path, output_dir)
    _assert_names(err, os.path.join(output_dir, "checkpoint-4"))
    _assert_checkpoint_2_intact(output_dir)


def test_torch_write_failure_on_a_disk_with_room_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="unexpected pos"):
        with disk.space_errors(tmp_path, 1000):
            raise RuntimeError("unexpected pos 1 vs 2")


def test_export_refused_on_a_short_disk_keeps_the_previous_export(tmp_path, monkeypatch):
    from hf_transfer.models.export import export_model

    torch.manual_seed(0)
    backbone = load_backbone("test_resnet", ["a", "b"], image_size=16, crop_pct=1.0)
    folder = str(tmp_path / "export")
    export_model(backbone, folder, results={"run": 1})
    before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    real = shutil.disk_usage
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: Usage(real(p).total, real(p).total, MB // 2))
    with torch.no_grad():
        backbone.head.weight.add_(1.0)
    with pytest.raises(NoSpaceError) as err:
        export_model(backbone, folder, results={"run": 2})
    _assert_names(err, folder)
    assert {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)} == before


def test_no_space_error_keeps_its_message_across_processes():
    import pickle

    err = pickle.loads(pickle.dumps(NoSpaceError("/data/cache", 3 * MB + 1, MB)))
    assert str(err) == "no space left on /data/cache, 4 MB needed (1 MB free)" and err.errno == errno.ENOSPC
