"""Data of the speed benchmark: synthetic 320x256 JPEGs made like the anchors', and the domains of a run
(loaded once through hf_transfer's loader; the stock arms read the same rows)."""

from __future__ import annotations

import io
import os
import time
from multiprocessing import Pool

import numpy as np


def one_jpeg(seed: int) -> bytes:
    """One synthetic 320x256 JPEG: a random 16x12 colour field upsampled (bicubic), plus noise; quality 90."""
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
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(num_classes)])}
    )

    def split(lo, hi):
        return datasets.Dataset.from_dict(
            {
                "image": [{"bytes": b, "path": None} for b in blobs[lo:hi]],
                "label": [i % num_classes for i in range(lo, hi)],
            },
            features=features,
        )

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
                folder, secs = make_jpeg_domain(
                    self.args.num_jpegs, os.path.join(self.work, "jpeg_domain"), self.args.gen_processes
                )
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
        from hf_transfer.data.kshot import subset

        return subset(self.domain(name)["train"], n, self.args.seed)

    def test(self, name: str, n: int | None):
        """The seeded test subset hf_transfer takes with ``max_eval_samples=n``."""
        from hf_transfer.data.kshot import subset

        return subset(self.domain(name)["test"], n, self.args.seed)

    def num_classes(self, name: str) -> int:
        return len(self.domain(name)["train"].features["label"].names)
