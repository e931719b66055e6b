"""The feature cache: one frozen-backbone pass per split, stored on disk, reused by later runs.

Linear probing that recomputes the backbone every epoch wastes almost all of its time (anchors.md,
complaint 9). Here features are computed once (inference mode, eval transform, progress bar) and
written as safetensors under a key made of everything that changes them: the backbone id and
revision, a hash of the backbone's weights (so a local folder that was retrained is a miss), the
dataset fingerprint, the transform's data config, the split and the input path. A second run with
the same inputs loads the file; anything different is a miss. Files are written to a temporary name
and renamed, so a killed run never leaves a half cache.

Two input paths give the same features (equal within float tolerance, tests/test_features_fast.py):

* ``"stock"``: the torchvision PIL eval transform per image (``Resize`` + ``CenterCrop`` +
  ``ToTensor`` + ``Normalize``), decoded in the DataLoader;
* ``"fast"``: the images decoded once into :class:`~hf_transfer.data.fast.DecodedImages`
  (``"eval"`` kind: the same resize + center crop, stored as uint8, memory-mapped; the decode can
  use worker processes and is reused by later runs and by the task mode's eval sets), then whole
  batches converted and normalised on the device by :class:`~hf_transfer.data.fast.BatchAugment`
  in eval mode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .backbones import Backbone
from .cache import cache_path
from .data.paired import collate_images
from .data.transforms import eval_transform, make_batch_transform
from .errors import TransferConfigError

logger = logging.getLogger(__name__)
CACHE_VERSION = "1"
INPUT_PATHS = ("stock", "fast")


def _check_input_path(input_path: str) -> str:
    if input_path not in INPUT_PATHS:
        raise TransferConfigError(f"input_path must be one of {INPUT_PATHS}, got {input_path!r}.")
    return input_path


def default_cache_dir() -> str:
    return str(cache_path("features"))


def cache_key(backbone: Backbone, dataset_fingerprint: str, split: str, weights_hash: str | None = None,
              input_path: str = "stock") -> str:
    payload = {
        "input_path": _check_input_path(input_path),
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
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@torch.inference_mode()
def extract_features(backbone: Backbone, dataset, batch_size: int = 256, device: torch.device | str = "cpu",
                     desc: str = "Extracting features", *, input_path: str = "stock",
                     decoded_cache_dir: str | None = None, num_workers: int = 0,
                     amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [N, D], labels int64 [N]) of ``dataset`` (columns image, label).

    ``input_path="stock"`` (default): PIL eval transform per image. ``"fast"``: decode once into a
    :class:`~hf_transfer.data.fast.DecodedImages` ``"eval"`` cache under ``decoded_cache_dir``
    (``num_workers`` decoding processes; a later call reuses it), then normalise whole batches on
    ``device`` (see the module doc). ``num_workers`` also sets the DataLoader's workers (for the
    fast path: none on the CPU, at most 4 on CUDA, where they only copy from the memmap).
    ``amp_dtype`` (e.g. ``torch.bfloat16`` on CUDA): run the backbone under autocast (default:
    full precision). Rows without a ``label`` column get label -1.
    """
    device = torch.device(device)
    if _check_input_path(input_path) == "fast":
        loader, augment = _fast_loader(backbone, dataset, batch_size, device, decoded_cache_dir, num_workers)
    else:
        ds = dataset.with_transform(make_batch_transform(eval_transform(backbone.data_config)))
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_images,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        augment = None
    model = backbone.model
    was_training = model.training
    model.eval().to(device)
    feats, labels = [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    try:
        with autocast:
            for batch in tqdm(loader, desc=desc, unit="batch"):
                pixels = batch["pixel_values"].to(device, non_blocking=True)
                if augment is not None:
                    pixels = augment(pixels)
                feats.append(backbone.extract_features(pixels).float().cpu())
                if "labels" in batch:
                    labels.append(batch["labels"])
    finally:
        model.train(was_training)
    features = torch.cat(feats) if feats else torch.empty(0, backbone.feature_dim)
    targets = torch.cat(labels) if labels else torch.full((len(features),), -1, dtype=torch.long)
    return features, targets


def _fast_loader(backbone: Backbone, dataset, batch_size: int, device: torch.device, decoded_cache_dir,
                 num_workers: int):
    """The ``"fast"`` input path: a loader over the decoded uint8 eval cache + the on-device normaliser."""
    from .data.fast import BatchAugment, DecodedImages, collate_decoded

    decoded = DecodedImages(dataset, backbone.data_config, "eval", cache_dir=decoded_cache_dir,
                            with_labels="label" in dataset.column_names, num_workers=num_workers)
    # reading the memmap is a copy: on the CPU the main process does it (workers would only add their
    # start-up and compete with the backbone); on CUDA a few workers overlap it with the GPU
    cuda = device.type == "cuda"
    loader = DataLoader(decoded, batch_size=batch_size, shuffle=False, collate_fn=collate_decoded,
                        num_workers=min(num_workers, 4) if cuda else 0, pin_memory=cuda)
    augment = BatchAugment(backbone.data_config, "none").eval().to(device)
    return loader, augment


class FeatureCache:
    """On-disk cache of (features, labels) per (backbone weights, data, transform, split, input path).

    ``input_path``, ``decoded_cache_dir``, ``num_workers`` and ``amp_dtype``: how a miss is computed
    (see :func:`extract_features`); ``get_or_compute(..., input_path=...)`` overrides the first.
    """

    def __init__(self, cache_dir: str | None = None, input_path: str = "stock", decoded_cache_dir: str | None = None,
                 num_workers: int = 0, amp_dtype: torch.dtype | None = None):
        self.cache_dir = cache_dir or default_cache_dir()
        self.input_path = _check_input_path(input_path)
        self.decoded_cache_dir, self.num_workers, self.amp_dtype = decoded_cache_dir, num_workers, amp_dtype
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> str:
        return os.path.join(self.cache_dir, f"{key}.safetensors")

    def get_or_compute(self, backbone: Backbone, dataset, split: str, batch_size: int = 256,
                       device: torch.device | str = "cpu", weights_hash: str | None = None,
                       input_path: str | None = None):
        input_path = _check_input_path(input_path or self.input_path)
        key = cache_key(backbone, dataset._fingerprint, split, weights_hash, input_path)
        path = self.path(key)
        if os.path.exists(path):
            self.hits += 1
            logger.info("Feature cache hit for %s (%s).", split, path)
            tensors = load_file(path)
            return tensors["features"], tensors["labels"], path
        self.misses += 1
        features, labels = extract_features(backbone, dataset, batch_size, device, desc=f"Features ({split})",
                                            input_path=input_path, decoded_cache_dir=self.decoded_cache_dir,
                                            num_workers=self.num_workers, amp_dtype=self.amp_dtype)
        os.makedirs(self.cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".tmp", dir=self.cache_dir)
        os.close(fd)
        try:
            save_file({"features": features.contiguous(), "labels": labels.contiguous()}, tmp,
                      metadata={"backbone": backbone.model_id, "split": split, "input_path": input_path})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return features, labels, path
