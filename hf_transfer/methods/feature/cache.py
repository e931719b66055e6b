"""The feature cache: one frozen-backbone pass per split, stored on disk, reused by later runs.

Linear probing that recomputes the frozen backbone every epoch spends almost all of its time there. Here
features are computed once (inference mode, eval transform, progress bar) and
written under a key made of everything that changes them: the backbone id and revision, a hash of
the backbone's weights (so a local folder that was retrained is a miss), the dataset fingerprint,
the transform's data config, the split and the input path. A second run with the same inputs
loads the entry; anything different is a miss.

An entry is a folder ``<key>/`` holding ``features.npy`` (``[N, D]``, float32, or float16 with
``feature_dtype="float16"``: half the disk and page cache, the head still trains in float32 on the rows read),
``labels.npy`` (int64 ``[N]``) and ``meta.json``. It is written in a staging folder named after the writing
process and renamed, so a killed run never leaves a half cache, and the next run removes the
staging folders of killed writers (:func:`hf_transfer.runtime.cache.remove_stale_staging`). Features are
streamed into the file batch by batch while they are extracted and opened memory-mapped when read
(:meth:`FeatureCache.load`), so neither the extraction nor the head training ever holds the whole
feature matrix in RAM; pages are read as rows are used.

Under DDP (``accelerate launch``/``torchrun``) every process extracts its own contiguous shard of
the rows (rank ``r`` of ``w``: rows ``[r N // w, (r + 1) N // w)``) into a shard file, then after
a barrier the main process joins the shards into the one entry (the same folder a 1-process run
writes: the world size is not part of the key) and every process opens it after a second barrier.
``meta.json`` records which rank extracted which rows (``shards``).

``meta.json``, written last, also records each file's size and checksum (``files``). Every process checks
them the first time it uses an entry (a file truncated or zeroed on disk since it was written, or an
entry from before the record); the processes share what they found, and a bad entry is removed by the
main process with a warning naming it, then computed again by all of them, so no rank trains on what
another refused. Before a miss is computed the processes also check together that the cache's disk has
room for it (the shards and the joined entry), and every file is allocated before it is memory-mapped:
a full disk is an error naming the folder and the megabytes, not SIGBUS (:mod:`hf_transfer.runtime.disk`).

Two input paths give the same features (equal within float tolerance, tests/test_features_fast.py):

* ``"stock"``: the torchvision PIL eval transform per image (``Resize`` + ``CenterCrop`` +
  ``ToTensor`` + ``Normalize``), decoded in the DataLoader;
* ``"fast"``: the images decoded once into :class:`~hf_transfer.data.decoded.DecodedImages`
  (``"eval"`` kind: the same resize + center crop, stored as uint8, memory-mapped; the decode can
  use worker processes and is reused by later runs and by the task mode's eval sets), then whole
  batches converted and normalised on the device by :class:`~hf_transfer.data.augment.BatchAugment`
  in eval mode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from hf_transfer.data.decoded import resolve_storage_format
from hf_transfer.errors import NoSpaceError, TransferConfigError
from hf_transfer.methods.feature.extract import check_input_path, iter_features
from hf_transfer.models.backbones import Backbone
from hf_transfer.runtime.cache import (
    FILES_RECORD,
    cache_path,
    discard_entry,
    entry_problem,
    file_records,
    remove_stale_staging,
    staged_entry,
    staged_file,
    write_atomic,
)
from hf_transfer.runtime.disk import allocated_memmap, free_bytes, space_errors

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)
CACHE_VERSION = "2"  # 2: images converted by data/images.to_rgb (16-bit and float images keep their range)
#: rows copied per step when shards are joined (bounds the RAM the join uses)
_JOIN_ROWS = 4096
#: how the features may be stored (``--feature_dtype``)
FEATURE_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}


def default_cache_dir() -> str:
    """Where cached features live by default: ``$HF_TRANSFER_CACHE/features``."""
    return str(cache_path("features"))


def cache_key(
    backbone: Backbone,
    dataset_fingerprint: str,
    split: str,
    weights_hash: str | None = None,
    input_path: str = "stock",
    numerics: dict[str, Any] | None = None,
) -> str:
    """The cache key of ``backbone``'s features of one split of a dataset.

    ``numerics``: what else changes the features' values (the extraction's autocast dtype, memory format):
    a bf16 or channels_last extraction is not reused by an fp32 / NCHW run, nor the reverse."""
    payload = {
        "numerics": numerics or {},
        "input_path": check_input_path(input_path),
        "version": CACHE_VERSION,
        "backbone": backbone.model_id,
        "revision": backbone.revision,
        "weights": weights_hash or body_fingerprint(backbone),
        "data": dataset_fingerprint,
        "transform": backbone.data_config.fingerprint(),
        "split": split,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def body_fingerprint(backbone: Backbone) -> str:
    """Weights hash without the head (a new head does not change the features)."""
    digest = hashlib.sha1()
    head_prefix = backbone.head_name + "."
    for name, tensor in sorted(backbone.model.state_dict().items()):
        if name.startswith(head_prefix):
            continue
        t = tensor.detach().cpu().contiguous().reshape(-1)  # channels_last weights hash like NCHW ones
        digest.update(name.encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous shard ``[start, stop)`` of ``n`` rows."""
    return n * rank // world_size, n * (rank + 1) // world_size


def _all(state: PartialState, value: Any) -> list[Any]:
    """``value`` of every process, in rank order, on every process (so all of them take the same branch)."""
    return gather_object([value]) if state.num_processes > 1 else [value]


def _entry_bytes(num_rows: int, feature_dim: int, itemsize: int = 4) -> int:
    """Bytes of an entry's features (``itemsize`` bytes a value) and labels."""
    return num_rows * (feature_dim * itemsize + 8)


def float16_overflow(features: np.ndarray) -> int:
    """How many finite values of ``features`` lie outside float16's range (they would be stored as inf)."""
    finfo = np.finfo(np.float16)
    return int(((np.abs(features) > finfo.max) & np.isfinite(features)).sum())


def check_feature_dtype(feature_dtype: str) -> str:
    """``feature_dtype`` when it names a storage dtype, else the error naming the choices."""
    if feature_dtype not in FEATURE_DTYPES:
        raise TransferConfigError(f"feature_dtype={feature_dtype!r}: choose one of {', '.join(FEATURE_DTYPES)}.")
    return feature_dtype


def _save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` under a temporary name, then rename (atomic on one file system)."""
    with staged_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _write_meta(folder: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """The entry's ``meta.json`` with its files' sizes and checksums: written last, it marks the entry complete."""
    files = file_records(folder, ["features.npy", "labels.npy"])
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({**meta, FILES_RECORD: files}, f, indent=1)


class FeatureCache:
    """On-disk cache of (features, labels) per (backbone weights, data, transform, split, input path).

    ``feature_dtype``: how the features are stored (``"float16"`` halves the entry; a feature outside float16's
    range is an error naming the fix, never a silent inf). ``input_path``, ``decoded_cache_dir``, ``num_workers``,
    ``amp_dtype``, ``channels_last`` and ``compile_options``: how a miss is computed (see
    :func:`~hf_transfer.methods.feature.extract.extract_features`); ``get_or_compute(..., input_path=...)``
    overrides ``input_path``. The processes that share a miss are
    accelerate's ``PartialState`` (the Trainer's; one process when nothing was launched).
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        input_path: str = "stock",
        decoded_cache_dir: str | None = None,
        num_workers: int = 0,
        amp_dtype: torch.dtype | None = None,
        *,
        channels_last: bool = False,
        compile_options: dict[str, Any] | None = None,
        feature_dtype: str = "float32",
        decode_format: tuple[str, int] = ("raw", 90),
    ) -> None:
        self.feature_dtype = check_feature_dtype(feature_dtype)
        self.cache_dir = cache_dir or default_cache_dir()
        self.input_path = check_input_path(input_path)
        self.decoded_cache_dir, self.num_workers, self.amp_dtype = decoded_cache_dir, num_workers, amp_dtype
        self.channels_last, self.compile_options = channels_last, compile_options
        #: how the fast path stores the decoded images (``storage_format``, ``jpeg_quality``)
        self.decode_format = decode_format
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> str:
        """The entry's folder (``features.npy``, ``labels.npy``, ``meta.json``)."""
        return os.path.join(self.cache_dir, key)

    @staticmethod
    def load(path: str) -> tuple[np.ndarray, np.ndarray]:
        """The (features, labels) of an entry, memory-mapped: nothing is read until rows are used.

        Opened copy-on-write (``mmap_mode="c"``): writable for ``torch.from_numpy``, never written back."""
        return (
            np.load(os.path.join(path, "features.npy"), mmap_mode="c"),
            np.load(os.path.join(path, "labels.npy"), mmap_mode="c"),
        )

    @staticmethod
    def meta(path: str) -> dict[str, Any]:
        """The entry's ``meta.json`` (what it holds, its shards, its files' records)."""
        with open(os.path.join(path, "meta.json")) as f:
            return json.load(f)

    def get_or_compute(
        self,
        backbone: Backbone,
        dataset: Dataset,
        split: str,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        weights_hash: str | None = None,
        input_path: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        """``(features, labels, path)``: memory-mapped tensors of the whole split (computed on a miss)."""
        input_path = check_input_path(input_path or self.input_path)
        state = PartialState()
        remove_stale_staging(self.cache_dir)
        numerics: dict[str, Any] = {"amp_dtype": str(self.amp_dtype), "channels_last": bool(self.channels_last)}
        if self.feature_dtype != "float32":  # float32 entries keep the keys they had before the option existed
            numerics["feature_dtype"] = self.feature_dtype
        size = backbone.data_config.size  # JPEG-stored images give other features: their own entry
        if (
            input_path == "fast"
            and resolve_storage_format(self.decode_format[0], len(dataset) * 3 * size * size) == "jpeg"
        ):
            numerics["decoded"] = f"jpeg-{self.decode_format[1]}"
        key = cache_key(backbone, dataset._fingerprint, split, weights_hash, input_path, numerics)
        path = self.path(key)
        # every process checks the entry on its first use; a shard writer also needs room for the join
        itemsize = np.dtype(FEATURE_DTYPES[self.feature_dtype]).itemsize
        needed = _entry_bytes(len(dataset), backbone.feature_dim, itemsize) * (1 if state.num_processes == 1 else 2)
        found = entry_problem(path) if os.path.isdir(path) else None
        reports = _all(state, (os.path.isdir(path), found, free_bytes(self.cache_dir)))
        problems = [p for _, p, _ in reports if p is not None]
        if all(present for present, _, _ in reports) and not problems:
            self.hits += 1
            logger.info("Feature cache hit for %s (%s).", split, path)
        else:
            self.misses += 1
            if problems:  # the main process removes the entry; a refusal there is raised by every process
                refused = None
                if state.is_main_process and os.path.isdir(path):
                    try:
                        discard_entry(path, problems[0], "feature cache entry")
                    except TransferConfigError as err:
                        refused = str(err)
                if (refused := _all(state, refused)[0]) is not None:
                    raise TransferConfigError(refused)
            free = min(f for _, _, f in reports)
            if free < needed:  # every process raises: none waits at a barrier for the others
                raise NoSpaceError(self.cache_dir, needed, free)
            state.wait_for_everyone()  # the bad entry is gone before anyone writes or reads it
            with space_errors(self.cache_dir, needed):
                self._compute(backbone, dataset, split, batch_size, device, input_path, key, state)
        features, labels = self.load(path)
        return torch.from_numpy(features), torch.from_numpy(labels), path

    # -- a miss ----------------------------------------------------------------------------------

    def _compute(
        self,
        backbone: Backbone,
        dataset: Dataset,
        split: str,
        batch_size: int,
        device: torch.device | str,
        input_path: str,
        key: str,
        state: PartialState,
    ) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        meta = {
            "backbone": backbone.model_id,
            "split": split,
            "input_path": input_path,
            "num_rows": len(dataset),
            "feature_dim": backbone.feature_dim,
            "feature_dtype": self.feature_dtype,
            "world_size": state.num_processes,
        }
        if state.num_processes == 1:
            with staged_entry(self.cache_dir, key, done="meta.json") as tmp:
                shard = self._extract_into(tmp, "", backbone, dataset, split, batch_size, device, input_path, state)
                self._check_range(split, [shard])  # an entry with inf in it is never completed
                _write_meta(tmp, {**meta, "shards": [shard]})
            return
        shard_dir = os.path.join(self.cache_dir, f".{key}.shards")
        os.makedirs(shard_dir, exist_ok=True)
        prefix = f"shard-{state.process_index}-of-{state.num_processes}."
        shard = self._extract_into(shard_dir, prefix, backbone, dataset, split, batch_size, device, input_path, state)
        state.wait_for_everyone()  # every shard is on disk
        try:  # every process raises alike: none is left waiting at the next barrier
            self._check_range(split, _all(state, shard))
        except TransferConfigError:
            if state.is_main_process:
                shutil.rmtree(shard_dir, ignore_errors=True)
            raise
        try:
            if state.process_index == 0:
                self._join(key, shard_dir, meta, state.num_processes)
        finally:
            state.wait_for_everyone()  # the entry is in place (or rank 0 failed: the others then find no entry)

    def _extract_into(
        self,
        folder: str | os.PathLike[str],
        prefix: str,
        backbone: Backbone,
        dataset: Dataset,
        split: str,
        batch_size: int,
        device: torch.device | str,
        input_path: str,
        state: PartialState,
    ) -> dict[str, Any]:
        """Extract this rank's rows into ``folder/<prefix>{features,labels}.npy`` (+ ``.json``), streaming."""
        rank, world_size = state.process_index, state.num_processes
        start, stop = shard_bounds(len(dataset), rank, world_size)
        rows = dataset if (start, stop) == (0, len(dataset)) else dataset.select(range(start, stop))
        feats_path = os.path.join(folder, prefix + "features.npy")
        labels = np.full(stop - start, -1, dtype=np.int64)
        done = overflow = 0
        dtype = FEATURE_DTYPES[self.feature_dtype]
        with staged_file(feats_path) as tmp:
            out = allocated_memmap(tmp, dtype, (stop - start, backbone.feature_dim))
            if stop > start:
                desc = f"Features ({split})" + (f" rank {rank}/{world_size}" if world_size > 1 else "")
                for f, y in iter_features(
                    backbone,
                    rows,
                    batch_size,
                    device,
                    desc,
                    input_path=input_path,
                    decoded_cache_dir=self.decoded_cache_dir,
                    num_workers=self.num_workers,
                    decode_format=self.decode_format,
                    amp_dtype=self.amp_dtype,
                    channels_last=self.channels_last,
                    compile_options=self.compile_options,
                ):
                    values = f.numpy()
                    if dtype is np.float16:
                        overflow += float16_overflow(values)
                    with np.errstate(over="ignore"):  # counted above, refused by _check_range
                        out[done : done + len(f)] = values
                    if y is not None:
                        labels[done : done + len(f)] = y.numpy()
                    done += len(f)
            out.flush()
            del out
            if done != stop - start:
                raise RuntimeError(f"Feature extraction of {split} gave {done} rows for {stop - start}.")
        _save_npy(os.path.join(folder, prefix + "labels.npy"), labels)
        shard = {
            "rank": rank,
            "start": start,
            "stop": stop,
            "rows_extracted": done,
            "float16_overflow": overflow,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        if prefix:  # a shard: its record last, so a record means the shard is complete
            write_atomic(os.path.join(folder, prefix + "json"), json.dumps(shard, indent=1))
        return shard

    def _check_range(self, split: str, shards: list[dict[str, Any]]) -> None:
        """Refuse float16 features that overflowed (stored as inf), naming the fix."""
        overflow = sum(s.get("float16_overflow", 0) for s in shards)
        if overflow:
            raise TransferConfigError(
                f"feature_dtype=float16: {overflow} feature values of the {split} split are beyond float16's range "
                f"(+-{float(np.finfo(np.float16).max):.0f}) and would be stored as inf. Use --feature_dtype float32."
            )

    def _join(self, key: str, shard_dir: str, meta: dict[str, Any], world_size: int) -> None:
        """Rank 0: the shards, in rank order, copied chunk by chunk into one entry."""
        prefixes = [os.path.join(shard_dir, f"shard-{r}-of-{world_size}.") for r in range(world_size)]
        shards = []
        for p in prefixes:
            if not os.path.exists(p + "json"):
                raise RuntimeError(f"Feature cache: shard {p}json is missing after the barrier.")
            with open(p + "json") as f:
                shards.append(json.load(f))
        with staged_entry(self.cache_dir, key, done="meta.json") as tmp:
            out = allocated_memmap(
                os.path.join(tmp, "features.npy"),
                FEATURE_DTYPES[meta["feature_dtype"]],
                (meta["num_rows"], meta["feature_dim"]),
            )
            labels = np.empty(meta["num_rows"], dtype=np.int64)
            for p, shard in zip(prefixes, shards, strict=True):
                part = np.load(p + "features.npy", mmap_mode="r")
                for i in range(0, len(part), _JOIN_ROWS):
                    out[shard["start"] + i : shard["start"] + min(len(part), i + _JOIN_ROWS)] = part[i : i + _JOIN_ROWS]
                labels[shard["start"] : shard["stop"]] = np.load(p + "labels.npy")
            out.flush()
            del out
            np.save(os.path.join(tmp, "labels.npy"), labels)
            _write_meta(tmp, {**meta, "shards": shards})
        shutil.rmtree(shard_dir, ignore_errors=True)
