"""The domain mode's collaborators, one per shared option: the bottleneck (``bottleneck_dim``), what
is done about source classes the target lacks (``partial_weighting``: exclusion or PADA), AdaBN
(``adabn``) and the domain-gap measurement. :class:`~hf_transfer.training.modes.domain.DomainMode`
composes them; each can be read (and tested) alone.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader

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
from hf_transfer.methods.feature.extract import extract_features
from hf_transfer.models.bottleneck import BottleneckHead, fold_into

logger = logging.getLogger(__name__)


class Bottleneck:
    """``bottleneck_dim``: Linear + BatchNorm1d + a new head on the backbone's features while training;
    the backbone's own head is bypassed (frozen, so DDP sees no unused gradients) until :meth:`fold`
    puts the folded bottleneck head into it, so evaluation and export see one plain Linear."""

    def __init__(self, backbone, dim: int):
        self.backbone = backbone
        self.head = BottleneckHead(backbone.feature_dim, dim, backbone.num_labels)
        self.folded = False
        for p in backbone.head.parameters():
            p.requires_grad_(False)

    def fold(self) -> None:
        if not self.folded:
            fold_into(self.head, self.backbone.head)
            self.folded = True


class SourceClasses:
    """``partial_weighting`` none or exclude: the source training rows of the classes the target does
    not declare are dropped (exclude) or kept (none); no per-sample weights."""

    def __init__(self, method: str, excluded: list[str]):
        self.method, self.excluded, self.excluded_rows = method, excluded, 0
        self.aux: dict[str, nn.Module] = {}
        if excluded:
            logger.warning(
                "partial_weighting=exclude: source classes the target does not declare are left out of training: %s",
                excluded,
            )

    def source_rows(self, ds, label_names: list[str]):
        rows = drop_classes(ds, label_names, self.excluded)
        if len(rows) == 0:
            raise TransferConfigError(
                "partial_weighting='exclude' leaves no source training row; use partial_weighting='none' or 'pada'."
            )
        self.excluded_rows = len(ds) - len(rows)
        return rows

    def class_weight(self, model, dtype) -> torch.Tensor | None:
        return None

    def source_weight(self, model, labels) -> torch.Tensor | None:
        return None

    def callbacks(self) -> list:
        return []

    def summary(self, label_names: list[str]) -> dict:
        return {
            "method": self.method,
            "excluded_classes": list(self.excluded),
            "excluded_source_rows": int(self.excluded_rows),
        }


class PADAWeighting:
    """``partial_weighting=pada``: class weights (a buffer of the trained model, so checkpoints carry
    them) re-estimated every ``every`` steps from the mean target softmax; they weight the source
    cross-entropy per class and, for methods that take ``source_weight``, the source side of the loss."""

    def __init__(self, num_classes: int, every: int, target_images, batch_size: int):
        self.weights = ClassWeights(num_classes)
        self.aux = {"pada": self.weights}
        self.every, self.batch_size = every, batch_size
        self._target_images = target_images  # () -> the unlabelled target training images (built once, lazily)
        self._pada_images = None

    def source_rows(self, ds, label_names: list[str]):
        return ds

    def class_weight(self, model, dtype) -> torch.Tensor:
        return model.aux["pada"].weights.to(dtype)

    def source_weight(self, model, labels) -> torch.Tensor:
        return model.aux["pada"].weights[labels]

    def callbacks(self) -> list:
        return [PADACallback(self, self.every)]

    @torch.no_grad()
    def estimate_class_weights(self, model) -> None:
        """Mean target softmax over the target training images (eval mode, no RNG drawn)."""
        if self._pada_images is None:
            self._pada_images = self._target_images()
        images, bs = self._pada_images, self.batch_size
        was_training = model.training
        device = next(model.parameters()).device
        model.eval()
        try:
            probs = []
            for start in range(0, len(images), bs):
                batch = collate_images([images[i] for i in range(start, min(len(images), start + bs))])
                logits = model(pixel_values=batch["pixel_values"].to(device))["logits"]
                probs.append(logits.float().softmax(-1))
            model.aux["pada"].update(torch.cat(probs))
        finally:
            model.train(was_training)

    def summary(self, label_names: list[str]) -> dict:
        return pada_summary(self.weights, label_names, self.every)


def label_space_weighting(args, data, num_classes: int, target_images, batch_size: int):
    """The ``partial_weighting`` collaborator of a domain run."""
    if args.partial_weighting == "pada":
        return PADAWeighting(num_classes, args.pada_every, target_images, batch_size)
    excluded = classes_to_exclude(data.alignment, data.label_names) if args.partial_weighting == "exclude" else []
    return SourceClasses(args.partial_weighting, excluded)


def adabn(backbone, bottleneck: Bottleneck | None, target, batch_size: int) -> None:
    """AdaBN: re-estimate the BatchNorm statistics on the target training images (the bottleneck's
    too while it is not folded)."""
    images = ImageDomainDataset(target, eval_transform(backbone.data_config), with_labels=False)
    loader = DataLoader(images, batch_size=batch_size, collate_fn=collate_images)
    device = next(backbone.model.parameters()).device
    if bottleneck is None or bottleneck.folded:
        adapt_batchnorm(
            backbone.model, loader, forward=lambda m, batch: m(pixel_values=batch["pixel_values"]), device=device
        )
        return
    both = nn.ModuleList([backbone.model, bottleneck.head])
    adapt_batchnorm(
        both,
        loader,
        device=device,
        forward=lambda m, batch: m[1](backbone.features_and_logits(batch["pixel_values"])[0]),
    )


def domain_gap(backbone, data, args, training_args, max_samples: int = 500) -> dict:
    """Proxy A-distance and MMD between source and target TEST features of the backbone (its pooled
    features, the input of the exported head: the same space with or without a bottleneck)."""
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
