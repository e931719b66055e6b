"""Odd inputs on the data path: odd image sizes, unreadable images, a last batch of one, killed writers.

Each either does what it says or stops before training with an
error that names the dataset, split and row.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from hf_transfer.config import arguments_from_dict
from hf_transfer.data.augment import BatchAugment
from hf_transfer.data.decoded import DecodedImages
from hf_transfer.data.load import load_domain
from hf_transfer.data.paired import PairedDataset, collate_images, collate_paired
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.runtime import cache
from hf_transfer.training.run import prepare_run, run_transfer

from conftest import tiny_args

TARGET = "builtin:digits-handwritten"


def _photo(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _dataset(images, labels=None) -> datasets.Dataset:
    labels = labels if labels is not None else [i % 2 for i in range(len(images))]
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}),
    )


def _task_args(target, out, **overrides) -> dict:
    return tiny_args(out, **{"mode": "task", "target": target, "output_dir": str(out), **overrides})


def _digits_with_first(tmp_path, image: Image.Image) -> str:
    """The built-in handwritten digits saved locally, with ``image`` as the first training row."""
    dsd = load_domain(TARGET)
    first = datasets.Dataset.from_dict({"image": [image], "label": [0]}, features=dsd["train"].features)
    dsd["train"] = datasets.concatenate_datasets([first, dsd["train"]])
    path = str(tmp_path / "digits")
    dsd.save_to_disk(path)
    return path


# ------------------------------------------------------------------------------------------
# item 2: no single image decides how the others are stored


@pytest.mark.parametrize("odd_hw", [(1, 1), (10000, 10)])
def test_an_odd_first_image_does_not_change_the_storage_of_the_others(tmp_path, odd_hw):
    cfg = DataConfig(input_size=(3, 16, 16))  # storage short side 18: the 16x20 images are stored natively
    normal = [_photo(16, 20, k) for k in range(6)]
    plain = DecodedImages(_dataset(normal), cfg, "train", cache_dir=tmp_path)
    odd = DecodedImages(_dataset([_photo(*odd_hw, 9)] + normal), cfg, "train", cache_dir=tmp_path)
    assert plain.storage_hw == odd.storage_hw == (16, 20)
    assert np.array_equal(np.asarray(odd.images[1:]), np.asarray(plain.images))
    # sizes differ: every item carries its original size, so the crop boxes are drawn for it
    assert not odd.same_size and odd.return_image_size and "image_size" not in plain[0]
    assert odd[0]["image_size"].tolist() == list(odd_hw) and odd[1]["image_size"].tolist() == [16, 20]


def test_no_majority_size_gives_the_square_storage(tmp_path):
    cfg = DataConfig(input_size=(3, 16, 16))
    d = DecodedImages(_dataset([_photo(20 + k, 24, k) for k in range(4)]), cfg, "train", cache_dir=tmp_path)
    assert d.storage_hw == (18, 18) and d.image_sizes[:, 0].tolist() == [20, 21, 22, 23]


def test_image_sizes_travel_through_collate_pairing_and_the_model(tmp_path):
    cfg = DataConfig(input_size=(3, 16, 16))
    images = [_photo(20, 24, k) for k in range(3)] + [_photo(40, 10, 5)]
    src = DecodedImages(_dataset(images), cfg, "train", cache_dir=tmp_path)
    tgt = DecodedImages(_dataset(images[::-1]), cfg, "train", cache_dir=tmp_path, with_labels=False)
    plain = collate_images([src[i] for i in range(4)])
    assert plain["image_size"].tolist() == [[20, 24]] * 3 + [[40, 10]]
    pairs = PairedDataset(src, tgt, target_ratio=2.0)
    batch = collate_paired([pairs[i] for i in range(3)], target_ratio=1.0)
    assert batch["target_image_size"].shape == (3, 2) and batch["image_size"].shape == (3, 2)
    # the model's forward hands the sizes to the augmentation
    seen = []

    class Spy(BatchAugment):
        def forward(self, x, image_size=None):
            seen.append(image_size)
            return super().forward(x, image_size)

    from hf_transfer.training.modes.base import TransferModel

    class Mode:
        def forward(self, model, pixel_values=None, target_pixel_values=None, **_):
            return {"pixel_values": pixel_values, "target_pixel_values": target_pixel_values}

        def on_train_mode(self, model):
            pass

    model = TransferModel(Mode(), torch.nn.Identity(), input_transform=Spy(cfg, "light")).train()
    out = model(**batch)
    assert out["pixel_values"].shape == (3, 3, 16, 16) and out["target_pixel_values"].shape == (3, 3, 16, 16)
    assert torch.equal(seen[0], batch["image_size"]) and torch.equal(seen[1], batch["target_image_size"])


def test_a_1x1_first_image_scores_like_the_stock_path(tmp_path):
    """Before: the whole split was stored at 1x1 (fast 0.10 against stock 0.925 here)."""
    target = _digits_with_first(tmp_path, Image.new("RGB", (1, 1), (200, 30, 30)))
    acc = {}
    for path in ("fast", "stock"):
        args = _task_args(
            target,
            tmp_path / path,
            input_path=path,
            max_steps=60,
            per_device_train_batch_size=32,
            max_train_samples=None,
            max_eval_samples=200,
            learning_rate=0.1,
        )
        acc[path] = run_transfer(*arguments_from_dict(args))["metrics"]["target"]["accuracy"]
    assert acc["stock"] > 0.6 and abs(acc["fast"] - acc["stock"]) < 0.1, acc


# ------------------------------------------------------------------------------------------
# item 8: unreadable images are named before training, or dropped with --skip_bad_images


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    _photo(40, 48, seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _local_with_bad_rows(tmp_path) -> str:
    """A saved dataset whose train split has a non-image at row 3 and a truncated JPEG at row 7."""
    cells = [{"bytes": _jpeg(k), "path": None} for k in range(12)]
    cells[3] = {"bytes": b"this is not an image", "path": None}
    cells[7] = {"bytes": _jpeg(7)[:300], "path": None}
    train = _dataset(cells)
    test = _dataset([{"bytes": _jpeg(100 + k), "path": None} for k in range(6)])
    path = str(tmp_path / "scraped")
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(path)
    return path


def test_bad_images_are_an_error_naming_dataset_split_and_rows(tmp_path):
    path = _local_with_bad_rows(tmp_path)
    with pytest.raises(
        TransferConfigError,
        match=r"scraped.*split 'train': 2 image\(s\).*row 3: .*row 7: .*"
        r"--skip_bad_images",
    ):
        load_domain(path)


def test_skip_bad_images_drops_and_counts_them(tmp_path, caplog):
    path = _local_with_bad_rows(tmp_path)
    skipped = {}
    with caplog.at_level(logging.WARNING, logger="hf_transfer.data.load"):
        dsd = load_domain(path, skip_bad_images=True, skipped=skipped)
    assert skipped == {"train": 2, "test": 0} and len(dsd["train"]) == 10
    assert "dropped 2 image(s)" in caplog.text
    [np.asarray(row["image"]) for row in dsd["train"]]  # every row left decodes


@pytest.mark.parametrize("input_path", ["fast", "stock"])
def test_bad_images_stop_a_run_before_training_on_both_paths(tmp_path, input_path):
    path = _local_with_bad_rows(tmp_path)
    with pytest.raises(TransferConfigError, match="row 3"):
        prepare_run(*arguments_from_dict(_task_args(path, tmp_path / "out", input_path=input_path)))
    run = prepare_run(
        *arguments_from_dict(_task_args(path, tmp_path / "out2", input_path=input_path, skip_bad_images=True))
    )
    assert run.data.skipped_images == {"target/train": 2}


def test_decoded_images_name_the_row_they_cannot_decode(tmp_path):
    ds = _dataset([{"bytes": _jpeg(0), "path": None}, {"bytes": b"garbage", "path": None}])
    with pytest.raises(TransferConfigError, match="Row 1"):
        DecodedImages(ds, DataConfig(input_size=(3, 16, 16)), "eval", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------
# item 10: N % batch == 1 with BatchNorm


def test_a_trailing_batch_of_one_is_dropped_not_crashed_on(tmp_path):
    """17 rows, batch 16: the epoch's last batch held one image and BatchNorm raised."""
    args = _task_args(TARGET, tmp_path / "out", max_steps=-1, num_train_epochs=2, max_train_samples=17)
    results = run_transfer(*arguments_from_dict(args))
    assert results["hyperparameters"]["max_steps"] == 2  # one full batch per epoch


def test_drop_last_never_drops_evaluation_rows(tmp_path):
    args = _task_args(
        TARGET, tmp_path / "out", max_eval_samples=33, per_device_eval_batch_size=16, dataloader_drop_last=True
    )
    results = run_transfer(*arguments_from_dict(args))
    assert sum(map(sum, results["metrics"]["target"]["confusion_matrix"])) == 33


# ------------------------------------------------------------------------------------------
# item 6: resume on the stock path is not exact: said, and warned about


class _KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {state.global_step}")


def test_resuming_on_the_stock_path_warns(tmp_path, caplog):
    args = _task_args(TARGET, tmp_path / "out", input_path="stock", save_strategy="steps", save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_transfer(*arguments_from_dict(args), callbacks=[_KillAt(3)])
    with caplog.at_level(logging.WARNING, logger="hf_transfer.training.run"):
        prepare_run(*arguments_from_dict({**args, "resume_from_checkpoint": "last"}))
    assert "Resuming with --input_path stock" in caplog.text


# ------------------------------------------------------------------------------------------
# item 11: staging folders of killed writers are removed by the next run


def _dead_writer_staging(root, name: str) -> str:
    """A staging folder made by a process that then died without cleaning up (as after kill -9)."""
    code = (
        "import os, sys; from hf_transfer.runtime.cache import make_staging_dir; "
        "d = make_staging_dir(sys.argv[1], sys.argv[2]); "
        "open(os.path.join(d, 'part.npy'), 'wb').write(b'x' * 1000); "
        "print(d); os._exit(0)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root), name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_stale_staging_is_removed_only_when_its_writer_is_gone(tmp_path):
    dead = _dead_writer_staging(tmp_path, "train-36-abc")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = tmp_path / f"{cache.STAGING_PREFIX}entry-{cache._host()}-{alive.pid}-x1"
        running.mkdir()
        ours = cache.make_staging_dir(tmp_path, "mine")
        other_old = tmp_path / f"{cache.STAGING_PREFIX}entry-otherhost-123-x2"
        other_new = tmp_path / f"{cache.STAGING_PREFIX}entry-otherhost-124-x3"
        other_old.mkdir()
        other_new.mkdir()
        past = time.time() - cache.STALE_AFTER_S - 60
        os.utime(other_old, (past, past))
        entry = tmp_path / "train-36-abc"
        entry.mkdir()
        assert cache.remove_stale_staging(tmp_path) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (running, ours, other_new, entry))
        assert not os.path.exists(dead)
    finally:
        alive.kill()
        alive.wait()


def test_decode_cache_and_feature_cache_clean_up_after_killed_writers(tmp_path):
    from hf_transfer.methods.feature.cache import FeatureCache
    from hf_transfer.models.backbones import load_backbone

    decoded_root, feature_root = tmp_path / "decoded", tmp_path / "features"
    stale = [_dead_writer_staging(decoded_root, "eval-16-abc"), _dead_writer_staging(feature_root, "0123abc")]
    ds = _dataset([_photo(20, 24, k) for k in range(4)])
    DecodedImages(ds, DataConfig(input_size=(3, 16, 16)), "eval", cache_dir=decoded_root)
    assert not os.path.exists(stale[0]) and len(list(decoded_root.iterdir())) == 1
    backbone = load_backbone("test_resnet", ["a", "b"], image_size=16)
    FeatureCache(str(feature_root), input_path="fast", decoded_cache_dir=str(decoded_root)).get_or_compute(
        backbone, ds, "train"
    )
    assert not os.path.exists(stale[1]) and len(list(feature_root.iterdir())) == 1
