"""Domain adaptation: labelled source + unlabelled target, one forward pass over both.

The ``source_only`` baseline trains on source batches alone (target images never enter training,
not even BatchNorm statistics). Otherwise: loss = cross-entropy on the source batch + ``trade_off`` * the method's alignment term over
(source features, target features[, logits]). Methods are the registered
:mod:`hf_transfer.losses` (``source_only`` is the baseline: no alignment term). Target labels are
never seen in training; they are used to evaluate on the target's test split only. ``adabn``
re-estimates BatchNorm statistics on the target training images after training.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..data.paired import ImageDomainDataset, PairedDataset, collate_images
from ..data.transforms import eval_transform
from ..domain_gap import mmd_distance, proxy_a_distance
from ..errors import TransferConfigError
from ..features import extract_features
from ..metrics import UNLABELLED
from ..losses import LOSSES, adapt_batchnorm, build_loss
from .base import TransferMode, TransferModel, register_mode
from .common import classification_loss, eval_dataset, eval_images, input_transform, subset, train_images


@register_mode("domain")
class DomainMode(TransferMode):
    def __init__(self, args, backbone, data, training_args):
        super().__init__(args, backbone, data, training_args)
        if data.source is None:
            raise TransferConfigError("mode=domain needs a source domain (--source).")
        if args.method not in LOSSES:
            raise TransferConfigError(
                f"mode=domain: unknown method {args.method!r}; available: {', '.join(sorted(LOSSES))}."
            )
        try:
            self.transfer_loss = build_loss(args.method, backbone.feature_dim, backbone.num_labels,
                                            **args.method_args)
        except (TypeError, ValueError) as err:
            raise TransferConfigError(f"method={args.method!r}, method_args={args.method_args}: {err}") from err

    def build_model(self) -> TransferModel:
        return TransferModel(self, self.backbone.model, aux={"transfer": self.transfer_loss},
                             input_transform=input_transform(self))

    def train_dataset(self):
        source = train_images(self, self.data.source["train"])
        if self.args.method == "source_only":  # the baseline sees no target image (as in TLlib)
            return source
        target = train_images(self, self.data.target["train"], with_labels=False)
        return PairedDataset(source, target)

    def eval_datasets(self):
        return eval_images(self)

    def unlabelled_eval_datasets(self):
        """Target TRAIN images with their labels hidden (-1): for unsupervised checkpoint selection."""
        target = subset(self.data.target["train"], self.args.max_eval_samples, self.training_args.seed)
        hidden = target.remove_columns("label").add_column("label", [UNLABELLED] * len(target))
        return {"target_unlabelled": eval_dataset(self, hidden)}

    def domain_gap(self, max_samples: int = 500) -> dict:
        """Proxy A-distance and MMD between source and target TEST features of the current backbone."""
        seed = self.training_args.seed
        n = min(max_samples, self.args.max_eval_samples or max_samples)
        feats = {}
        for name in ("source", "target"):
            ds = subset(getattr(self.data, name)["test"], n, seed)
            feats[name] = extract_features(self.backbone, ds, self.args.feature_batch_size,
                                           self.training_args.device, desc=f"Domain gap ({name})")[0].numpy()
        return {"proxy_a_distance": proxy_a_distance(feats["source"], feats["target"], seed=seed),
                "mmd": mmd_distance(feats["source"], feats["target"], seed=seed),
                "num_samples": {k: int(len(v)) for k, v in feats.items()}}

    def collate(self, examples):
        return collate_images(examples)

    def set_progress(self, progress: float) -> None:
        self.transfer_loss.set_progress(min(max(progress, 0.0), 1.0))

    def forward(self, model, pixel_values=None, labels=None, target_pixel_values=None, **_):
        if target_pixel_values is None:  # evaluation: one domain, no alignment term
            logits = model.classifier(pixel_values=pixel_values).logits
            return {"loss": classification_loss(logits, labels), "logits": logits}
        n_source = pixel_values.shape[0]
        features, logits = self.backbone.features_and_logits(
            torch.cat([pixel_values, target_pixel_values]), model=model.classifier
        )
        f_s, f_t = features[:n_source], features[n_source:]
        logits_s, logits_t = logits[:n_source], logits[n_source:]
        cls_loss = classification_loss(logits_s, labels)
        transfer = model.aux["transfer"](f_s, f_t, logits_s, logits_t)
        loss = cls_loss + self.args.trade_off * transfer
        self.last_metrics = {"cls_loss": float(cls_loss.detach()), "transfer_loss": float(transfer.detach()),
                             **getattr(self.transfer_loss, "last_metrics", {})}
        return {"loss": loss, "logits": logits_s}

    def finish(self, model, trainer) -> None:
        if not self.args.adabn:
            return
        target = subset(self.data.target["train"], self.args.max_train_samples, self.training_args.seed)
        images = ImageDomainDataset(target, eval_transform(self.backbone.data_config), with_labels=False)
        loader = DataLoader(images, batch_size=self.training_args.per_device_eval_batch_size,
                            collate_fn=collate_images)
        adapt_batchnorm(self.backbone.model, loader,
                        forward=lambda m, batch: m(pixel_values=batch["pixel_values"]),
                        device=next(self.backbone.model.parameters()).device)

    def describe(self) -> dict:
        return {**super().describe(), "trade_off": self.args.trade_off, "method_args": self.args.method_args,
                "adabn": self.args.adabn, "paper": getattr(self.transfer_loss, "paper", "")}
