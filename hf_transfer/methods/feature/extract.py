"""The frozen backbone's pooled features of a dataset, batch by batch: through the stock per-sample transforms, or
the fast input path (the decoded uint8 cache and the on-device normalisation of
:class:`~hf_transfer.data.augment.BatchAugment`). :class:`~hf_transfer.methods.feature.cache.FeatureCache` streams
them to disk; :func:`extract_features` returns them in memory."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_transfer.data.paired import collate_images
from hf_transfer.data.transforms import eval_transform, make_batch_transform
from hf_transfer.errors import TransferConfigError
from hf_transfer.models.backbones import Backbone

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import nn

logger = logging.getLogger(__name__)

INPUT_PATHS = ("stock", "fast")


def check_input_path(input_path: str) -> str:
    """``input_path`` when it names an input path, else the error naming the choices."""
    if input_path not in INPUT_PATHS:
        raise TransferConfigError(f"input_path must be one of {INPUT_PATHS}, got {input_path!r}.")
    return input_path


def iter_features(
    backbone: Backbone,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str = "Extracting features",
    *,
    input_path: str = "stock",
    decoded_cache_dir: str | None = None,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile_options: dict[str, Any] | None = None,
    decode_format: tuple[str, int] = ("raw", 90),
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(features float32 [b, D] on the CPU, labels int64 [b] or None)`` batch by batch, in order.

    Arguments as :func:`extract_features`; this is what the cache streams to disk. ``decode_format``: the fast
    path's ``(storage_format, jpeg_quality)`` of :class:`~hf_transfer.data.decoded.DecodedImages`.
    """
    device = torch.device(device)
    augment: nn.Module | None
    if check_input_path(input_path) == "fast":
        loader, augment = _fast_loader(
            backbone, dataset, batch_size, device, decoded_cache_dir, num_workers, decode_format
        )
    else:
        ds = dataset.with_transform(make_batch_transform(eval_transform(backbone.data_config)))
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=False,
            collate_fn=collate_images,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        augment = None
    model = backbone.model
    was_training = model.training
    model.eval().to(device)
    # one hook for the whole pass (not one per batch): a compiled model then traces it once
    captured: list[torch.Tensor] = []
    hook = backbone.head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    run = torch.compile(model, **compile_options) if compile_options is not None else model
    try:
        # one bar per run, not one per DDP process (each extracts its own shard, or, for the domain gap, all rows)
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not PartialState().is_main_process or None):
            # the contexts are entered per batch: none of them stays on while the caller runs
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pixels = batch["pixel_values"].to(device, non_blocking=True)
                if augment is not None:
                    pixels = augment(pixels)
                if channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                captured.clear()
                run(pixel_values=pixels)
                feats = captured[0].flatten(1).float().cpu()
            yield feats, batch.get("labels")
    finally:
        hook.remove()
        model.train(was_training)


def extract_features(
    backbone: Backbone,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str = "Extracting features",
    *,
    input_path: str = "stock",
    decoded_cache_dir: str | None = None,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile_options: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (features float32 [N, D], labels int64 [N]) of ``dataset`` (columns image, label), in RAM.

    ``input_path="stock"`` (default): PIL eval transform per image. ``"fast"``: decode once into a
    :class:`~hf_transfer.data.decoded.DecodedImages` ``"eval"`` cache under ``decoded_cache_dir``
    (``num_workers`` decoding processes; a later call reuses it), then normalise whole batches on
    ``device`` (see the module doc). ``num_workers`` also sets the DataLoader's workers (for the
    fast path: none on the CPU, at most 4 on CUDA, where they only copy from the memmap).
    ``amp_dtype`` (e.g. ``torch.bfloat16`` on CUDA): run the backbone under autocast (default:
    full precision). ``channels_last``: feed the batches in channels_last memory format (give the
    model channels_last weights too, see :mod:`hf_transfer.models.speed`). ``compile_options``: keyword
    arguments of ``torch.compile`` for the pass (None: eager). Rows without a ``label`` column get
    label -1. :class:`FeatureCache` streams the same batches to disk instead.
    """
    feats, labels = [], []
    for f, y in iter_features(
        backbone,
        dataset,
        batch_size,
        device,
        desc,
        input_path=input_path,
        decoded_cache_dir=decoded_cache_dir,
        num_workers=num_workers,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        compile_options=compile_options,
    ):
        feats.append(f)
        if y is not None:
            labels.append(y)
    features = torch.cat(feats) if feats else torch.empty(0, backbone.feature_dim)
    targets = torch.cat(labels) if labels else torch.full((len(features),), -1, dtype=torch.long)
    return features, targets


def _fast_loader(
    backbone: Backbone,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    decoded_cache_dir: str | None,
    num_workers: int,
    decode_format: tuple[str, int] = ("raw", 90),
) -> tuple[DataLoader[dict[str, Any]], nn.Module]:
    """The ``"fast"`` input path: a loader over the decoded uint8 eval cache + the on-device normaliser."""
    from hf_transfer.data.augment import BatchAugment
    from hf_transfer.data.decoded import DecodedImages, collate_decoded, jpeg_decode_device

    # reading the memmap is a copy: on the CPU the main process does it (workers would only add their
    # start-up and compete with the backbone); on CUDA a few workers overlap it with the GPU
    cuda = device.type == "cuda"
    loader_workers = min(num_workers, 4) if cuda else 0
    # JPEG entries: nvjpeg straight onto the GPU when the main process gathers the batches (nothing to pin then)
    decode_device = jpeg_decode_device(device, loader_workers)
    decoded = DecodedImages(
        dataset,
        backbone.data_config,
        "eval",
        cache_dir=decoded_cache_dir,
        with_labels="label" in dataset.column_names,
        num_workers=num_workers,
        storage_format=decode_format[0],
        jpeg_quality=decode_format[1],
        decode_device=decode_device,
    )
    loader = DataLoader(
        decoded,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_decoded,
        num_workers=loader_workers,
        pin_memory=cuda and decoded.jpeg_decoder != "nvjpeg",
    )
    augment = BatchAugment(backbone.data_config, "none").eval().to(device)
    return loader, augment
