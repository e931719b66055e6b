"""Streaming input (``--streaming true``): the training split read as it trains, never stored or decoded ahead.

The training split comes from ``datasets.load_dataset(..., streaming=True)`` (a Hub id, or a local folder or file
of parquet shards): nothing is downloaded or decoded before the first step. Each process reads its own part of it
(:func:`rank_stream`, ``datasets.distributed.split_dataset_by_node``); :class:`StreamedImages` shuffles it with a
seeded buffer, decodes each image in the DataLoader to the fast path's uint8 storage (the square train storage size:
no whole-split pass can pick a majority shape, so every image is squashed into it and carries its original
``image_size``, from which ``BatchAugment`` draws the crop boxes on the model's device) and repeats it, each pass
reshuffled (``set_epoch``), until ``max_steps`` ends the run.

The test split is small and scored as today: it is streamed once, kept as a map-style ``datasets.Dataset`` (its
image bytes as stored) and checked like any loaded split. A training split without ``ClassLabel`` names has no
class list before the whole split is read: it is refused, naming the fix.

Domain mode streams the source's and the target's training splits, each per process and endlessly as above, and
zips them (:mod:`hf_transfer.data.stream_pair`). Each stream's labels are re-encoded on the fly to the run's label
space (``label_map``, matched by name from the streams' ``ClassLabel`` names: no pass), rows of a class outside it
skipped; the target's images are kept without their labels, unlabelled rows included. The unlabelled target images
the unsupervised validators score are a bounded head of the target stream (:func:`stream_head`), kept map-style.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from hf_transfer.data.columns import IMAGE_COLUMN, LABEL_COLUMN, find_image_column, find_label_column
from hf_transfer.data.decode import _prepare, _to_rgb
from hf_transfer.data.load import _TEST_ALIASES, IMAGE_ERRORS, TRAIN
from hf_transfer.data.spec import DatasetSpec, parse_dataset_spec
from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)

#: examples held by the shuffle buffer of the training stream (datasets' own default)
SHUFFLE_BUFFER = 1000
#: what a resumed streaming run does, recorded in results.json and told in docs/usage.md
RESUME_BEHAVIOUR = (
    "the Trainer re-reads and discards the batches already trained (its data skip); the stream is seeded, so "
    "the resumed run continues in the same order, at the cost of reading those batches again"
)


@dataclass
class TrainStream:
    """The training stream of one domain, its class names and the columns it was read from."""

    dataset: datasets.IterableDataset
    label_names: list[str]
    image_column: str
    label_column: str
    test: datasets.Dataset
    info: dict[str, Any] = field(default_factory=dict)


def _streamed(spec: DatasetSpec) -> datasets.IterableDatasetDict:
    """The splits of ``spec`` as streams (no data read yet)."""
    try:
        if spec.kind == "hub":
            loaded = datasets.load_dataset(spec.name, spec.config, revision=spec.revision, streaming=True)
        elif os.path.isfile(spec.name) and spec.name.endswith(".parquet"):
            loaded = datasets.load_dataset("parquet", data_files={TRAIN: spec.name}, streaming=True)
        elif os.path.isdir(spec.name):
            loaded = datasets.load_dataset("parquet", data_dir=spec.name, streaming=True)
        else:
            raise TransferConfigError(
                f"Dataset {spec}: --streaming reads a Hub dataset or local parquet files; this is neither. "
                "Run without --streaming."
            )
    except TransferConfigError:
        raise
    except Exception as err:  # datasets raises several types for "nothing to stream here"
        raise TransferConfigError(
            f"Dataset {spec}: could not be streamed ({type(err).__name__}: {err}). --streaming reads a Hub dataset "
            "or a folder of parquet files; run without --streaming for other layouts."
        ) from err
    if not isinstance(loaded, datasets.IterableDatasetDict):
        raise TransferConfigError(f"Dataset {spec}: streaming loaded no splits.")
    return loaded


def _materialize(stream: datasets.IterableDataset, image_column: str) -> datasets.Dataset:
    """A (bounded) stream, read once into a map-style dataset that keeps each image's stored bytes.

    Its fingerprint is a digest of what was read, so the image check and the decoded eval images are cached
    once per content, as for a split loaded without streaming (``from_list`` would give a random one)."""
    undecoded = stream.cast_column(image_column, datasets.Image(decode=False))
    features = undecoded.features
    assert features is not None, "a parquet or Hub stream knows its features"
    rows = list(undecoded)
    digest = hashlib.sha256(repr(features.to_dict()).encode())
    for row in rows:
        for name in sorted(row):
            cell = row[name]
            value = (cell.get("bytes") or str(cell.get("path")).encode()) if isinstance(cell, dict) else repr(cell)
            digest.update(f"|{name}:{len(value)}:".encode())
            digest.update(value if isinstance(value, bytes) else value.encode())
    ds = datasets.Dataset.from_list(rows, features=features)
    ds._fingerprint = digest.hexdigest()[:32]
    return ds.cast_column(image_column, datasets.Image())


def parse_class_names(value: str) -> list[str]:
    """``--class_names``: comma-separated names, or a text file with one name per line (ids 0, 1, ... in order)."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [name.strip() for name in value.split(",")]
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise TransferConfigError(
            f"class_names={value!r}: give at least two distinct, non-empty class names, comma-separated (a,b,c) or "
            "one per line in a text file; the first names label id 0."
        )
    return names


def load_train_stream(
    spec: str | DatasetSpec,
    image_column: str | None = None,
    label_column: str | None = None,
    class_names: list[str] | None = None,
) -> TrainStream:
    """The training split of ``spec`` as a stream, and its test split loaded (columns ``image``, ``label``).

    ``class_names``: the names of a label column that holds integer ids (or the names themselves, as strings) but no
    ``ClassLabel``; a stream cannot list its classes before it is read to the end. ``info["class_names"]`` says
    whether they were used (``"declared"``) or the stream's own were (``"features"``)."""
    spec = parse_dataset_spec(spec)
    where = f"Dataset {spec}"
    splits = _streamed(spec)
    train_name = spec.split or (TRAIN if TRAIN in splits else None)
    test_name = next((s for s in _TEST_ALIASES if s in splits), None)
    if train_name is None or train_name not in splits:
        raise TransferConfigError(f"{where}: no training split to stream; splits are {sorted(splits)}.")
    if test_name is None or test_name == train_name:
        raise TransferConfigError(
            f"{where}: --streaming needs a stored test split (one of {list(_TEST_ALIASES)}): holding rows out of a "
            f"stream needs a pass over it. Splits are {sorted(splits)}; run without --streaming."
        )
    train = splits[train_name]
    features = train.features
    if features is None:
        raise TransferConfigError(f"{where}: the stream declares no features; run without --streaming.")
    img = find_image_column(features, where, image_column)
    lab = find_label_column(features, where, label_column)
    assert lab is not None, "required labels: find_label_column raises when there is none"
    feat = features[lab]
    declared = not isinstance(feat, datasets.ClassLabel)
    if declared and class_names is None:
        raise TransferConfigError(
            f"{where}: label column {lab!r} holds {feat!r}, not a ClassLabel with class names; a stream has no class "
            "list before it is read to the end. Declare them with --class_names NAME0,NAME1,... (the name of id 0 "
            "first), store the labels as a ClassLabel (Dataset.cast_column(..., ClassLabel(names=[...])) before "
            "writing the parquet files), or run without --streaming."
        )
    if declared:
        if not _label_dtype_fits(feat):
            raise TransferConfigError(
                f"{where}: label column {lab!r} holds {feat!r}; --class_names names integer ids or the class names "
                "themselves as strings."
            )
        feat = datasets.ClassLabel(names=list(class_names or []))
        named = features.copy()
        named[lab] = feat
        train = train.map(functools.partial(_declared_label, column=lab, names=feat.names, where=where), features=named)
    test = _materialize(splits[test_name].select_columns([img, lab]), img)
    if declared:
        test = test.map(functools.partial(_declared_label, column=lab, names=feat.names, where=where))
    if img != IMAGE_COLUMN:
        test = test.rename_column(img, IMAGE_COLUMN)
    if lab != LABEL_COLUMN:
        test = test.rename_column(lab, LABEL_COLUMN)
    if len(test) == 0:
        raise TransferConfigError(f"{where}: split {test_name!r} is empty.")
    try:
        test = test.cast_column(LABEL_COLUMN, feat)
    except (ValueError, TypeError, KeyError) as err:
        raise TransferConfigError(
            f"{where}: the labels of split {test_name!r} do not fit --class_names ({len(feat.names)} names: ids 0 to "
            f"{len(feat.names) - 1}, or those names): {err}"
        ) from err
    info = {
        "train_split": train_name,
        "test_split": test_name,
        "n_shards": train.n_shards,
        "class_names": "declared" if declared else "features",
    }
    return TrainStream(train.select_columns([img, lab]), list(feat.names), img, lab, test, info)


def _declared_label(row: dict[str, Any], column: str, names: list[str], where: str) -> dict[str, Any]:
    """One row's label under ``--class_names``: an id in range or one of the names (as its id); None or a negative
    id stays unlabelled. Anything else stops the run naming the option (datasets' cast would let an id through)."""
    label = row[column]
    if isinstance(label, str):
        if label not in names:
            raise TransferConfigError(
                f"{where}: label {label!r} is not one of --class_names ({len(names)} names: {names[:10]}...)."
            )
        return {column: names.index(label)}
    if label is not None and label >= len(names):
        raise TransferConfigError(
            f"{where}: label id {label} does not fit --class_names ({len(names)} names: ids 0 to {len(names) - 1})."
        )
    return {column: label}


def _label_dtype_fits(feature: Any) -> bool:
    """An integer or string label column: what ``--class_names`` can name."""
    dtype = getattr(feature, "dtype", "")
    return isinstance(feature, datasets.Value) and (dtype.startswith("int") or dtype in ("string", "large_string"))


#: unlabelled target images in the head of the target stream (domain mode) when ``max_eval_samples`` sets no count
TARGET_HEAD_ROWS = 1000


def stream_head(stream: TrainStream, rows: int, seed: int) -> datasets.Dataset:
    """The first ``rows`` examples of the training stream as a map-style dataset (columns ``image``, ``label``).

    Shuffled with the seeded buffer (shard order too); the labels keep the stream's ``ClassLabel``.

    Domain mode's unlabelled target images for the unsupervised validators: read once, before training."""
    head = stream.dataset.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER).take(rows)
    ds = _materialize(head, stream.image_column)
    if len(ds) == 0:
        raise TransferConfigError("The target's training stream is empty: no target image to adapt to.")
    renames = {stream.image_column: IMAGE_COLUMN, stream.label_column: LABEL_COLUMN}
    ds = ds.rename_columns({old: new for old, new in renames.items() if old != new})
    return ds.cast_column(LABEL_COLUMN, datasets.ClassLabel(names=stream.label_names))


def rank_stream(
    stream: datasets.IterableDataset, rank: int, world_size: int
) -> tuple[datasets.IterableDataset, dict[str, Any]]:
    """This process's part of the stream and how it was assigned (recorded in results.json).

    ``n_shards % world_size == 0``: each process reads whole shards of its own. Otherwise every process reads
    every shard and keeps one example in ``world_size`` (the others are read and skipped): a warning says so."""
    n_shards = stream.n_shards
    whole_shards = n_shards % world_size == 0
    if world_size > 1 and not whole_shards:
        logger.warning(
            "Streaming: %d shard(s) do not divide among %d processes: every process reads all of them and keeps one "
            "example in %d (reading %dx the data). Store the training split in a multiple of %d shards to avoid it.",
            n_shards,
            world_size,
            world_size,
            world_size,
            world_size,
        )
    part = split_dataset_by_node(stream, rank=rank, world_size=world_size) if world_size > 1 else stream
    assignment = {
        "world_size": world_size,
        "n_shards": n_shards,
        "rule": "whole shards per process" if whole_shards else "every process reads all shards, keeps 1 in N",
        "shards_per_process": n_shards // world_size if whole_shards else n_shards,
    }
    return part, assignment


def stream_storage_hw(cfg: DataConfig) -> tuple[int, int]:
    """The square train storage shape of a streamed image: the fast path's default storage size."""
    side = int(math.floor(cfg.size / cfg.crop_pct))
    return side, side


class StreamedImages(torch.utils.data.IterableDataset):
    """A shuffled, endlessly repeated image stream decoded to the fast path's uint8 items in the DataLoader.

    Items: ``{"pixel_values": uint8 [3, Hs, Ws], "labels": int, "image_size": int64 [2]}`` (train storage),
    or the stock eval geometry (``split_kind="eval"``, ``--augment none``) without ``image_size``.

    ``label_map``: the stream's class id -> the run's (:func:`hf_transfer.data.align.label_lookup`; -1: not in the
    run's label space, the row is skipped). ``with_labels=False``: items carry no ``labels`` and unlabelled rows are
    kept (domain mode's target images)."""

    def __init__(
        self,
        stream: datasets.IterableDataset,
        cfg: DataConfig,
        split_kind: str,
        image_column: str,
        label_column: str,
        seed: int,
        buffer_size: int = SHUFFLE_BUFFER,
        label_map: np.ndarray | None = None,
        with_labels: bool = True,
    ) -> None:
        super().__init__()
        self.label_map, self.with_labels = label_map, with_labels
        undecoded = stream.cast_column(image_column, datasets.Image(decode=False))
        self.stream = undecoded.shuffle(seed=seed, buffer_size=buffer_size)
        self.cfg, self.split_kind = cfg, split_kind
        self.image_column, self.label_column = image_column, label_column
        self.storage_hw = (cfg.size, cfg.size) if split_kind == "eval" else stream_storage_hw(cfg)

    def _item(self, row: dict[str, Any]) -> dict[str, Any] | None:
        label = row[self.label_column]
        if label is None or label < 0:  # unlabelled rows: never trained on with labels, kept as target images
            if self.with_labels:
                return None
        elif self.label_map is not None:
            label = int(self.label_map[label])
            if label < 0:  # a class outside the run's label space
                return None
        try:
            img = _to_rgb(row[self.image_column])
            pixels = _prepare(
                img,
                self.split_kind,
                self.cfg.size,
                self.cfg.crop_pct,
                self.cfg.interpolation,
                self.storage_hw,
                self.cfg.crop_mode,
                self.cfg.mean,
            )
        except IMAGE_ERRORS as err:
            cell = row[self.image_column]
            path = cell.get("path") if isinstance(cell, dict) else None
            raise TransferConfigError(
                f"Streamed training image{f' {path!r}' if path else ''} cannot be decoded ({type(err).__name__}: "
                f"{err}). Fix or remove it from the dataset, or run without --streaming (which checks every image "
                "before training and can skip bad ones)."
            ) from err
        item: dict[str, Any] = {"pixel_values": torch.from_numpy(np.array(pixels, order="C"))}
        if self.with_labels:
            item["labels"] = int(label)
        if self.split_kind != "eval":
            item["image_size"] = torch.tensor([img.height, img.width], dtype=torch.int64)
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id >= self.stream.n_shards:
            return  # a loader worker beyond the shard count: datasets gives it no shard, the others read them all
        epoch = 0
        while True:  # max_steps ends the run; each pass is reshuffled
            self.stream.set_epoch(epoch)
            kept = False
            for row in self.stream:
                item = self._item(row)
                if item is not None:
                    kept = True
                    yield item
            if not kept:
                raise TransferConfigError(
                    "The training stream of this process has no example to train on: it is empty, or every row is "
                    "unlabelled or of a class outside the run's label space."
                )
            epoch += 1


__all__ = [
    "RESUME_BEHAVIOUR",
    "SHUFFLE_BUFFER",
    "TARGET_HEAD_ROWS",
    "StreamedImages",
    "TrainStream",
    "load_train_stream",
    "parse_class_names",
    "rank_stream",
    "stream_head",
    "stream_storage_hw",
]
