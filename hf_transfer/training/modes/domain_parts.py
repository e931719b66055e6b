"""The domain mode's collaborators, one per shared option: the bottleneck (``bottleneck_dim``), what
is done about source classes the target lacks (``partial_weighting``: exclusion or PADA), AdaBN
(``adabn``) and the domain-gap measurement; and a source-free method's pass over the target training images
(:class:`SourceFreeRefresh`) with its gap measure (:class:`FeatureDrift`).
:class:`~hf_transfer.training.modes.domain.DomainMode` composes them; each can be read (and tested) alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sized
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import TrainerCallback, TrainingArguments

from hf_transfer.config import TransferArguments
from hf_transfer.data.align import label_lookup
from hf_transfer.data.kshot import subset
from hf_transfer.data.paired import ImageDomainDataset, collate_images
from hf_transfer.data.transforms import eval_transform
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.domain_gap import mmd_distance, proxy_a_distance
from hf_transfer.methods.domain import adapt_batchnorm
from hf_transfer.methods.domain.partial import (
    ClassWeights,
    PADACallback,
    classes_to_exclude,
    drop_classes,
    pada_summary,
)
from hf_transfer.methods.domain.source_free import SourceFreeLoss
from hf_transfer.methods.feature.extract import extract_features
from hf_transfer.models.backbones import Backbone
from hf_transfer.models.bottleneck import BottleneckHead, fold_into
from hf_transfer.training.modes.base import TransferData, TransferModel

logger = logging.getLogger(__name__)


class Bottleneck:
    """``bottleneck_dim``: Linear + BatchNorm1d + a new head on the backbone's features while training.

    The backbone's own head is bypassed (frozen, so DDP sees no unused gradients) until :meth:`fold`
    puts the folded bottleneck head into it, so evaluation and export see one plain Linear."""

    def __init__(self, backbone: Backbone, dim: int) -> None:
        self.backbone = backbone
        self.head = BottleneckHead(backbone.feature_dim, dim, backbone.num_labels)
        self.folded = False
        for p in backbone.head.parameters():
            p.requires_grad_(False)

    def fold(self) -> None:
        """Put the trained bottleneck head, folded into one Linear, into the backbone's head (once)."""
        if not self.folded:
            fold_into(self.head, self.backbone.head)
            self.folded = True


class SourceClasses:
    """``partial_weighting`` none or exclude: source rows of undeclared classes dropped or kept, no weights.

    The source training rows of the classes the target does not declare are dropped (exclude) or kept
    (none); no per-sample weights."""

    def __init__(self, method: str, excluded: list[str]) -> None:
        self.method, self.excluded = method, excluded
        #: source rows left out; None: streamed, skipped as read and not counted
        self.excluded_rows: int | None = 0
        self.aux: dict[str, nn.Module] = {}
        if excluded:
            logger.warning(
                "partial_weighting=exclude: source classes the target does not declare are left out of training: %s",
                excluded,
            )

    def source_rows(self, ds: datasets.Dataset, label_names: list[str]) -> datasets.Dataset:
        """The source training rows, without those of the excluded classes."""
        rows = drop_classes(ds, label_names, self.excluded)
        if len(rows) == 0:
            raise TransferConfigError(
                "partial_weighting='exclude' leaves no source training row; use partial_weighting='none' or 'pada'."
            )
        self.excluded_rows = len(ds) - len(rows)
        return rows

    def stream_label_map(self, stream_names: list[str], label_names: list[str]) -> np.ndarray:
        """``--streaming``: the source stream's class id -> the run's, matched by name.

        -1 for a class outside the label space or excluded, whose rows are skipped as the stream is read (not
        counted: no pass)."""
        lookup = label_lookup(stream_names, label_names)
        lookup[np.isin(lookup, [label_names.index(c) for c in self.excluded])] = -1
        self.excluded_rows = None
        return lookup

    def class_weight(self, model: TransferModel, dtype: torch.dtype) -> torch.Tensor | None:
        """No per-class weight of the source cross-entropy."""
        return None

    def source_weight(self, model: TransferModel, labels: torch.Tensor) -> torch.Tensor | None:
        """No per-sample weight of the source side of the loss."""
        return None

    def callbacks(self) -> list[TrainerCallback]:
        """No callback: nothing is re-estimated while training."""
        return []

    def summary(self, label_names: list[str]) -> dict[str, Any]:
        """What was done about the source classes the target lacks, for results.json and the card."""
        return {
            "method": self.method,
            "excluded_classes": list(self.excluded),
            "excluded_source_rows": None if self.excluded_rows is None else int(self.excluded_rows),
        }


class PADAWeighting:
    """``partial_weighting=pada``: class weights re-estimated every ``every`` steps from the mean target softmax.

    The weights are a buffer of the trained model, so checkpoints carry them; they weight the source
    cross-entropy per class and, for methods that take ``source_weight``, the source side of the loss."""

    def __init__(self, num_classes: int, every: int, target_images: Callable[[], Dataset], batch_size: int) -> None:
        self.weights = ClassWeights(num_classes)
        self.aux = {"pada": self.weights}
        self.every, self.batch_size = every, batch_size
        self._target_images = target_images  # () -> the unlabelled target training images (built once, lazily)
        self._pada_images: Dataset | None = None

    def source_rows(self, ds: datasets.Dataset, label_names: list[str]) -> datasets.Dataset:
        """Every source training row: PADA weights the classes instead of dropping them."""
        return ds

    def stream_label_map(self, stream_names: list[str], label_names: list[str]) -> np.ndarray:
        """The source stream's class id -> the run's, matched by name; PADA keeps every class.

        PADA is refused with ``--streaming`` (its pass over the target split cannot be made); this keeps the
        interface whole."""
        return label_lookup(stream_names, label_names)

    def class_weight(self, model: TransferModel, dtype: torch.dtype) -> torch.Tensor:
        """The class weights of the source cross-entropy, as the model carries them."""
        return model.aux["pada"].get_buffer("weights").to(dtype)

    def source_weight(self, model: TransferModel, labels: torch.Tensor) -> torch.Tensor:
        """Each source row's class weight, for the methods that weight the source side of their loss."""
        weights = model.aux["pada"].get_buffer("weights")
        if labels.dim() == 2:  # probability targets (mixup, cutmix): the expected class weight of each row
            return labels.to(weights.dtype) @ weights
        return weights[labels]

    def callbacks(self) -> list[TrainerCallback]:
        """The callback that re-estimates the weights every ``every`` steps."""
        return [PADACallback(self, self.every)]

    @torch.no_grad()
    def estimate_class_weights(self, model: TransferModel) -> None:
        """Mean target softmax over the target training images (eval mode, no RNG drawn)."""
        if self._pada_images is None:
            self._pada_images = self._target_images()
        images, bs = self._pada_images, self.batch_size
        assert isinstance(images, Sized), "the target's image datasets know their length"
        weights = model.aux["pada"]
        assert isinstance(weights, ClassWeights), "PADA's weights are the model's aux['pada'] (see build_model)"
        was_training = model.training
        device = next(model.parameters()).device
        model.eval()
        try:
            probs = []
            for start in range(0, len(images), bs):
                batch = collate_images([images[i] for i in range(start, min(len(images), start + bs))])
                logits = model(pixel_values=batch["pixel_values"].to(device))["logits"]
                probs.append(logits.float().softmax(-1))
            weights.update(torch.cat(probs))
        finally:
            model.train(was_training)

    def summary(self, label_names: list[str]) -> dict[str, Any]:
        """The final class weights, for results.json and the card."""
        return pada_summary(self.weights, label_names, self.every)


def label_space_weighting(
    args: TransferArguments,
    data: TransferData,
    num_classes: int,
    target_images: Callable[[], Dataset],
    batch_size: int,
) -> PADAWeighting | SourceClasses:
    """The ``partial_weighting`` collaborator of a domain run."""
    if args.partial_weighting == "pada":
        return PADAWeighting(num_classes, args.pada_every, target_images, batch_size)
    excluded = classes_to_exclude(data.alignment, data.label_names) if args.partial_weighting == "exclude" else []
    return SourceClasses(args.partial_weighting, excluded)


def adabn(backbone: Backbone, bottleneck: Bottleneck | None, target: datasets.Dataset, batch_size: int) -> None:
    """AdaBN: re-estimate the BatchNorm statistics on the target training images.

    The bottleneck's too while it is not folded."""
    images = ImageDomainDataset(target, eval_transform(backbone.data_config), with_labels=False)
    loader = DataLoader(images, batch_size=batch_size, collate_fn=collate_images)
    device = next(backbone.model.parameters()).device
    if bottleneck is None or bottleneck.folded:
        adapt_batchnorm(
            backbone.model, loader, forward=lambda m, batch: m(pixel_values=batch["pixel_values"]), device=device
        )
        return
    head = bottleneck.head  # the second module of ``both``: the forward runs it on the backbone's features
    both = nn.ModuleList([backbone.model, head])
    adapt_batchnorm(
        both,
        loader,
        device=device,
        forward=lambda m, batch: head(backbone.features_and_logits(batch["pixel_values"])[0]),
    )


def domain_gap(
    backbone: Backbone,
    data: TransferData,
    args: TransferArguments,
    training_args: TrainingArguments,
    max_samples: int = 500,
) -> dict[str, Any]:
    """Proxy A-distance and MMD between source and target TEST features of the backbone.

    Its pooled features, the input of the exported head: the same space with or without a bottleneck."""
    seed = training_args.seed
    n = min(max_samples, args.max_eval_samples or max_samples)
    feats = {}
    for name in ("source", "target"):
        ds = subset(getattr(data, name)["test"], n, seed)
        feats[name] = extract_features(
            backbone, ds, args.feature_batch_size, training_args.device, desc=f"Domain gap ({name})"
        )[0].numpy()
    return {
        "proxy_a_distance": proxy_a_distance(feats["source"], feats["target"], seed=seed),
        "mmd": mmd_distance(feats["source"], feats["target"], seed=seed),
        "num_samples": {k: int(len(v)) for k, v in feats.items()},
    }


class SourceFreeRefresh(TrainerCallback):
    """Runs a source-free method's pass over every target training image when the method asks for one.

    At the start of an optimizer step, with the epoch taken from the Trainer's checkpointed step (``global_step //
    steps per epoch``), so a resumed run asks at the same steps; the method's state it refills is in the
    checkpoint, so a resumed run does not redo a pass its epoch already had (see
    :mod:`hf_transfer.methods.domain.source_free`)."""

    def __init__(
        self, loss: SourceFreeLoss, images: Callable[[], Dataset], batch_size: int, forward: Callable[..., Any]
    ) -> None:
        self.loss, self.batch_size = loss, batch_size
        self._images_fn = images  # the target training rows, eval preprocessing (built lazily)
        self._images: Dataset | None = None
        self._forward = forward  # (model, pixel_values) -> (features, logits)
        #: what the last pass reported (logged, and in results.json)
        self.last: dict[str, float] = {}

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: Any,
        control: Any,
        model: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        steps = len(train_dataloader) if train_dataloader is not None else 1
        accumulation = max(1, args.gradient_accumulation_steps)
        per_epoch = max(1, steps // accumulation + int(steps % accumulation > 0))  # as the Trainer counts them
        epoch = state.global_step // per_epoch
        if self.loss.needs_refresh(epoch):
            self.refresh(model, epoch, state.global_step)

    @torch.no_grad()
    def refresh(self, model: TransferModel, epoch: int, step: int) -> None:
        """The pass (eval mode: BatchNorm statistics untouched, no RNG drawn), then the method's refresh."""
        if self._images is None:
            self._images = self._images_fn()
        images = self._images
        assert isinstance(images, Sized), "the target's image datasets know their length"
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            features, logits = [], []
            for start in range(0, len(images), self.batch_size):
                batch = collate_images([images[i] for i in range(start, min(len(images), start + self.batch_size))])
                pixels = model.prepare_batch({"pixel_values": batch["pixel_values"].to(device)})["pixel_values"]
                f, z = self._forward(model, pixels)
                features.append(f.float())
                logits.append(z.float())
            self.last = self.loss.refresh(torch.cat(features), torch.cat(logits), epoch)
        finally:
            model.train(was_training)
        logger.info(
            "Source-free pass over %d target images at step %d (epoch %d): %s", len(images), step, epoch, self.last
        )


class FeatureDrift:
    """A source-free run's "domain gap": how far adaptation moved the target's features (there is no source).

    The first measure keeps the target test features of the starting model; the next ones give the proxy
    A-distance and MMD between those and the current model's features of the same images."""

    def __init__(
        self, backbone: Backbone, data: TransferData, args: TransferArguments, training_args: TrainingArguments
    ) -> None:
        self.backbone, self.data, self.args, self.training_args = backbone, data, args, training_args
        self.start: Any = None

    def measure(self, max_samples: int = 500) -> dict[str, Any]:
        """``num_samples`` on the first call; then the distances to the starting model's target features."""
        seed = self.training_args.seed
        n = min(max_samples, self.args.max_eval_samples or max_samples)
        ds = subset(self.data.target["test"], n, seed)
        feats = extract_features(
            self.backbone, ds, self.args.feature_batch_size, self.training_args.device, desc="Feature drift (target)"
        )[0].numpy()
        if self.start is None:
            self.start = feats
            return {
                "between": "target features: starting model vs adapted model",
                "num_samples": {"target": len(feats)},
            }
        return {
            "between": "target features: starting model vs adapted model",
            "proxy_a_distance": proxy_a_distance(self.start, feats, seed=seed),
            "mmd": mmd_distance(self.start, feats, seed=seed),
            "num_samples": {"target": int(len(feats))},
        }
