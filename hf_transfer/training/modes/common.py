"""Pieces the image-based modes share: datasets, evaluation sets, frozen BatchNorm."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch import nn

from hf_transfer.data.augment import BatchAugment
from hf_transfer.data.decoded import DecodedImages, jpeg_decode_device, split_kind_for
from hf_transfer.data.deferred import DeferredDataset
from hf_transfer.data.kshot import subset
from hf_transfer.data.load import check_images
from hf_transfer.data.mixing import BatchMixing
from hf_transfer.data.paired import ImageDomainDataset
from hf_transfer.data.policies import policy_transform, random_erasing, stock_train_transform
from hf_transfer.data.stream import RESUME_BEHAVIOUR, SHUFFLE_BUFFER, StreamedImages, TrainStream, rank_stream
from hf_transfer.data.transforms import eval_transform
from hf_transfer.evaluation.metrics import UNLABELLED
from hf_transfer.training.modes.base import TransferMode


def _decoded(mode: TransferMode, ds: datasets.Dataset, kind: str, with_labels: bool = True) -> DecodedImages:
    """Decode once (the main process first under DDP; the others then read the cache), in
    ``dataloader_num_workers`` processes when > 0 (same bytes as one process: chunks land in order).

    A JPEG entry's batches are decoded onto the model's CUDA device (nvjpeg) when the main process gathers them
    (:func:`~hf_transfer.data.decoded.jpeg_decode_device`)."""
    training_args = mode.training_args
    with training_args.main_process_first(desc="decoding images"):
        return DecodedImages(
            ds,
            mode.backbone.data_config,
            kind,
            cache_dir=mode.args.decoded_cache_dir,
            with_labels=with_labels,
            num_workers=training_args.dataloader_num_workers,
            storage_format=mode.args.decode_cache_format,
            jpeg_quality=mode.args.decode_cache_quality,
            decode_device=jpeg_decode_device(training_args.device, training_args.dataloader_num_workers),
        )


def train_images(
    mode: TransferMode, ds: datasets.Dataset, with_labels: bool = True
) -> DecodedImages | ImageDomainDataset:
    """Training images for the mode's input path.

    uint8 storage for the fast path (augmented in the model's forward), or tensors through the stock
    per-sample PIL transforms."""
    ds = subset(ds, mode.args.max_train_samples, mode.training_args.seed)
    if mode.args.input_path == "fast":
        return _decoded(mode, ds, split_kind_for(mode.args.augment, train=True), with_labels)
    args = mode.args
    transform = stock_train_transform(mode.backbone.data_config, args.augment, args.aa, args.reprob, args.remode)
    return ImageDomainDataset(ds, transform, with_labels)


def streamed_images(
    mode: TransferMode,
    stream: TrainStream,
    label_map: np.ndarray | None = None,
    with_labels: bool = True,
    seed_offset: int = 0,
) -> StreamedImages:
    """``--streaming``: this process's part of the training stream, decoded in the DataLoader (fast path items).

    ``label_map``/``with_labels``: see :class:`StreamedImages`; its buffer is shuffled with ``seed + seed_offset``.
    Records the shard assignment in ``stream.info`` (results.json)."""
    args, training_args = mode.args, mode.training_args
    part, assignment = rank_stream(stream.dataset, training_args.process_index, training_args.world_size)
    seed = training_args.seed + seed_offset
    stream.info.update(assignment=assignment, shuffle_buffer=SHUFFLE_BUFFER, resume=RESUME_BEHAVIOUR, seed=seed)
    kind = split_kind_for(args.augment, train=True)
    images = StreamedImages(
        part,
        mode.backbone.data_config,
        kind,
        stream.image_column,
        stream.label_column,
        seed,
        label_map=label_map,
        with_labels=with_labels,
    )
    stream.info["storage_hw"] = list(images.storage_hw)
    return images


def eval_dataset(
    mode: TransferMode, ds: datasets.Dataset, domain: str = "target"
) -> DecodedImages | ImageDomainDataset | DeferredDataset:
    """Evaluation images for the mode's input path (no augmentation).

    A streaming run checks and decodes them at the first evaluation (:mod:`hf_transfer.data.deferred`): it starts
    training without a pass over a split whose size grows with the dataset."""
    if mode.data.train_stream is not None:
        return DeferredDataset(lambda: _eval_images(mode, checked_in_full(mode, ds, domain)), f"{domain} evaluation")
    return _eval_images(mode, ds)


def _eval_images(mode: TransferMode, ds: datasets.Dataset) -> DecodedImages | ImageDomainDataset:
    if mode.args.input_path == "fast":
        return _decoded(mode, ds, "eval")
    return ImageDomainDataset(ds, eval_transform(mode.backbone.data_config))


def checked_in_full(mode: TransferMode, ds: datasets.Dataset, domain: str = "target") -> datasets.Dataset:
    """A streaming run's evaluation rows with every image decoded once; before training only their head was.

    A bad one is the same error naming the row as before any other run, or dropped with ``--skip_bad_images``."""
    name = mode.data.source_name if domain == "source" else mode.data.target_name
    where = f"Dataset {name or domain} ({domain} evaluation rows, checked at the first evaluation)"
    return check_images(datasets.DatasetDict({"eval": ds}), where, skip=mode.args.skip_bad_images)["eval"]


def input_transform(mode: TransferMode) -> BatchAugment | None:
    """The on-device augmentation + normalisation of the fast path (None for the stock path)."""
    if mode.args.input_path != "fast":
        return None
    args, cfg = mode.args, mode.backbone.data_config
    return BatchAugment(
        cfg,
        args.augment,
        policy=policy_transform(args.aa, cfg) if args.aa else None,
        erasing=random_erasing(args.reprob, args.remode) if args.reprob > 0 else None,
    )


def batch_mixing(mode: TransferMode) -> BatchMixing | None:
    """Mixup/CutMix of the labelled training rows (``--mixup``, ``--cutmix``), on either input path."""
    args = mode.args
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    return BatchMixing(
        len(mode.data.label_names),
        mixup=args.mixup,
        cutmix=args.cutmix,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
    )


def eval_splits(mode: TransferMode) -> dict[str, datasets.Dataset]:
    """The labelled test split of each domain, named ``target`` and (when given) ``source``."""
    splits = {"target": mode.data.target["test"]}
    if mode.data.source is not None:
        splits["source"] = mode.data.source["test"]
    return {k: subset(v, mode.args.max_eval_samples, mode.training_args.seed) for k, v in splits.items()}


def eval_images(mode: TransferMode) -> dict[str, torch.utils.data.Dataset]:
    """The evaluation images of each domain's labelled test split (see :func:`eval_splits`)."""
    return {name: eval_dataset(mode, ds, name) for name, ds in eval_splits(mode).items()}


def freeze_batchnorm_of_frozen(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen keep their running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor | None, label_smoothing: float = 0.0, weight: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Cross-entropy over the labelled rows; rows labelled ``UNLABELLED`` (-1) are ignored.

    ``labels``: class ids ``[B]``, or class probabilities ``[B, C]`` (mixup/cutmix targets; every row labelled).
    ``label_smoothing`` is ``TrainingArguments.label_smoothing_factor``: the modes compute their own
    loss, so the Trainer's label smoother never sees it and it is applied here, to both kinds of target
    (torch smooths probabilities as timm's ``mixup_target`` does: ``(1 - s) p + s / C``)."""
    if labels is None:
        return None
    if labels.dim() == 2:
        return nn.functional.cross_entropy(
            logits, labels.to(logits.dtype), weight=weight, label_smoothing=label_smoothing
        )
    if not (labels != UNLABELLED).any():  # an unlabelled eval set: no supervised loss exists
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(
        logits, labels, weight=weight, ignore_index=UNLABELLED, label_smoothing=label_smoothing
    )
