"""Feature transfer: frozen backbone, features computed once and cached, a linear head trained on them.

The Trainer trains only the head, on cached feature tensors (no image decoding, no backbone pass
per epoch). After training the head's weights go back into the backbone's classifier, so the
output is still a full model that ``from_pretrained`` and ``pipeline`` load.
"""

from __future__ import annotations

import copy

import torch

from ..errors import TransferConfigError
from ..features import FeatureCache, body_fingerprint
from .base import TransferMode, TransferModel, register_mode
from .common import classification_loss, eval_splits, subset


FEATURE_METHODS = ("linear",)


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i]}


@register_mode("feature")
class FeatureMode(TransferMode):
    trains_backbone = False

    def __init__(self, args, backbone, data, training_args):
        super().__init__(args, backbone, data, training_args)
        if args.method not in FEATURE_METHODS:
            raise TransferConfigError(
                f"mode=feature: unknown method {args.method!r}; available: {list(FEATURE_METHODS)}.")
        self.frozen_groups = [g for g in backbone.param_groups() if g != "head"]
        self.cache = FeatureCache(
            args.feature_cache_dir, input_path=args.input_path, decoded_cache_dir=args.decoded_cache_dir,
            amp_dtype=torch.bfloat16 if training_args.bf16 else None)
        self.cache_files: dict[str, str] = {}
        self._features: dict[str, FeatureDataset] = {}

    def _compute_features(self) -> None:
        """Every split once; under DDP the main process fills the cache, the others then read it."""
        if self._features:
            return
        splits = {"train": subset(self.data.target["train"], self.args.max_train_samples, self.training_args.seed)}
        splits.update(eval_splits(self))
        weights = body_fingerprint(self.backbone)
        with self.training_args.main_process_first(desc="feature cache"):
            for name, ds in splits.items():
                feats, labels, path = self.cache.get_or_compute(
                    self.backbone, ds, name, self.args.feature_batch_size, self.training_args.device, weights)
                self._features[name] = FeatureDataset(feats, labels)
                self.cache_files[name] = path

    def build_model(self) -> TransferModel:
        self._compute_features()
        for p in self.backbone.model.parameters():
            p.requires_grad_(False)
        head = copy.deepcopy(self.backbone.head)
        for p in head.parameters():
            p.requires_grad_(True)
        return TransferModel(self, head)

    def train_dataset(self):
        self._compute_features()
        return self._features["train"]

    def eval_datasets(self):
        self._compute_features()
        return {k: v for k, v in self._features.items() if k != "train"}

    def collate(self, examples):
        return {"features": torch.stack([e["features"] for e in examples]),
                "labels": torch.stack([e["labels"] for e in examples]).long()}

    def forward(self, model, features=None, labels=None, **_):
        logits = model.classifier(features)
        return {"loss": classification_loss(logits, labels), "logits": logits}

    def finish(self, model, trainer) -> None:
        """The trained head goes back into the full model."""
        with torch.no_grad():
            self.backbone.head.load_state_dict(
                {k: v.to(self.backbone.head.weight.device) for k, v in model.classifier.state_dict().items()})

    def describe(self) -> dict:
        return {**super().describe(), "feature_cache": {"hits": self.cache.hits, "misses": self.cache.misses}}
