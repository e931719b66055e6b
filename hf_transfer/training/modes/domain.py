"""Domain adaptation: labelled source + unlabelled target, one forward pass over both.

The ``source_only`` baseline trains on source batches alone (target images never enter training,
not even BatchNorm statistics). Otherwise: loss = cross-entropy on the source batch + w(p) * the
method's alignment term over (source features, target features[, logits]), with ``w(p)`` the
``trade_off`` under ``trade_off_schedule`` at training progress ``p`` (see
:mod:`hf_transfer.methods.domain.tradeoff`). Methods are the registered :mod:`hf_transfer.methods.domain`. Target
labels are never seen in training; they are used to evaluate on the target's test split only.

Shared options: ``bottleneck_dim`` (:mod:`hf_transfer.models.bottleneck`: the backbone's own classifier is
bypassed during training and receives the folded bottleneck head in :meth:`DomainMode.finish`,
so the final evaluation and the export see one plain Linear), ``target_batch_ratio`` (see
:mod:`hf_transfer.data.paired`), ``partial_weighting`` (:mod:`hf_transfer.methods.domain.partial`). ``adabn``
re-estimates BatchNorm statistics (the bottleneck's too) on the target training images after
training. ``backbone_lr_scale`` gives discriminative learning rates as in task mode: the backbone's
groups train at ``learning_rate * backbone_lr_scale``, its head, the bottleneck and the method's own
modules (discriminator) at ``learning_rate``. The domain gap is always measured on the backbone's
pooled features (the input of the exported head), so "before" and "after" compare the same space
with or without a bottleneck.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn
from torch.utils.data import DataLoader

from hf_transfer.models.bottleneck import BottleneckHead, fold_into
from hf_transfer.data.paired import ImageDomainDataset, PairedDataset, collate_images, collate_paired
from hf_transfer.data.transforms import eval_transform
from hf_transfer.evaluation.domain_gap import mmd_distance, proxy_a_distance
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.feature.cache import extract_features
from hf_transfer.methods.domain import LOSSES, adapt_batchnorm, build_loss, trade_off_weight
from hf_transfer.evaluation.metrics import UNLABELLED
from hf_transfer.methods.domain.partial import ClassWeights, PADACallback, classes_to_exclude, drop_classes, pada_summary
from hf_transfer.methods.finetune.lr import group_learning_rates, optimizer_groups_by_name
from hf_transfer.training.modes.base import TransferMode, TransferModel, register_mode
from hf_transfer.training.modes.common import classification_loss, eval_dataset, eval_images, input_transform, subset, train_images

logger = logging.getLogger(__name__)


@register_mode("domain")
class DomainMode(TransferMode):
    uses_unlabelled_target = True

    def __init__(self, args, backbone, data, training_args):
        super().__init__(args, backbone, data, training_args)
        if data.source is None:
            raise TransferConfigError("mode=domain needs a source domain (--source).")
        if args.method not in LOSSES:
            raise TransferConfigError(
                f"mode=domain: unknown method {args.method!r}; available: {', '.join(sorted(LOSSES))}."
            )
        self.progress = 0.0
        self.folded = False
        self.bottleneck = None
        if args.bottleneck_dim:
            self.bottleneck = BottleneckHead(backbone.feature_dim, args.bottleneck_dim, backbone.num_labels)
            for p in backbone.head.parameters():  # bypassed until the fold; frozen so DDP sees no unused grads
                p.requires_grad_(False)
        feature_dim = args.bottleneck_dim or backbone.feature_dim
        try:
            self.transfer_loss = build_loss(args.method, feature_dim, backbone.num_labels, **args.method_args)
        except (TypeError, ValueError) as err:
            raise TransferConfigError(f"method={args.method!r}, method_args={args.method_args}: {err}") from err
        self.excluded = (classes_to_exclude(data.alignment, data.label_names)
                         if args.partial_weighting == "exclude" else [])
        if self.excluded:
            logger.warning("partial_weighting=exclude: source classes the target does not declare are left out of "
                           "training: %s", self.excluded)
        self.class_weights = ClassWeights(backbone.num_labels) if args.partial_weighting == "pada" else None
        self._pada_images = None

    def build_model(self) -> TransferModel:
        aux = {"transfer": self.transfer_loss}
        if self.bottleneck is not None:
            aux["bottleneck"] = self.bottleneck
        if self.class_weights is not None:
            aux["pada"] = self.class_weights
        self.model = TransferModel(self, self.backbone.model, aux=aux, input_transform=input_transform(self))
        return self.model

    def optimizer_groups(self, model, lr, weight_decay):
        """Discriminative learning rates with task mode's group logic: the backbone's groups at
        ``lr * backbone_lr_scale``; its head, the bottleneck and the method's own modules (e.g. the
        domain discriminator) at ``lr``."""
        groups = self.backbone.param_groups()
        lrs = group_learning_rates(list(groups), lr, self.args.backbone_lr_scale)
        aux = OrderedDict((f"aux.{name}", list(module.named_parameters())) for name, module in model.aux.items())
        lrs.update({name: lr for name in aux})
        out = optimizer_groups_by_name(OrderedDict([*groups.items(), *aux.items()]), lrs, weight_decay)
        grouped = {id(p) for g in out for p in g["params"]}
        missed = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
        if missed:  # a trainable module outside the backbone and model.aux would silently never train
            raise RuntimeError(f"Trainable parameters in no optimizer group: {missed[:5]}")
        return out

    def train_dataset(self):
        source_rows = drop_classes(self.data.source["train"], self.data.label_names, self.excluded)
        if len(source_rows) == 0:
            raise TransferConfigError("partial_weighting='exclude' leaves no source training row; "
                                      "use partial_weighting='none' or 'pada'.")
        self.excluded_rows = len(self.data.source["train"]) - len(source_rows)
        source = train_images(self, source_rows)
        if self.args.method == "source_only":  # the baseline sees no target image (as in TLlib)
            return source
        target = train_images(self, self.data.target["train"], with_labels=False)
        return PairedDataset(source, target, target_ratio=self.args.target_batch_ratio)

    def eval_datasets(self):
        return eval_images(self)

    def unlabelled_eval_datasets(self):
        """Target TRAIN images with their labels hidden (-1): for unsupervised checkpoint selection."""
        target = subset(self.data.target["train"], self.args.max_eval_samples, self.training_args.seed)
        hidden = target.remove_columns("label").add_column("label", [UNLABELLED] * len(target))
        return {"target_unlabelled": eval_dataset(self, hidden)}

    def callbacks(self) -> list:
        return [PADACallback(self, self.args.pada_every)] if self.class_weights is not None else []

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
        return collate_paired(examples, self.args.target_batch_ratio)

    def set_progress(self, progress: float) -> None:
        self.progress = min(max(progress, 0.0), 1.0)
        self.transfer_loss.set_progress(self.progress)

    def trade_off(self) -> float:
        """The transfer-loss weight now (a pure function of the progress)."""
        return trade_off_weight(self.progress, self.args.trade_off, self.args.trade_off_schedule,
                                self.args.trade_off_warmup)

    def features_and_logits(self, model, pixel_values):
        """(features the losses see, logits): the bottleneck's when there is one and it is not folded yet."""
        features, logits = self.backbone.features_and_logits(pixel_values, model=model.classifier)
        if self.bottleneck is not None and not self.folded:
            features, logits = model.aux["bottleneck"](features)
        return features, logits

    def _source_loss(self, model, logits_s, labels):
        weights = None if self.class_weights is None else model.aux["pada"].weights.to(logits_s.dtype)
        return classification_loss(logits_s, labels, self.label_smoothing, weight=weights)

    def forward(self, model, pixel_values=None, labels=None, target_pixel_values=None, **_):
        if target_pixel_values is None:  # evaluation (or source_only): one domain, no alignment term
            if self.bottleneck is not None and not self.folded:
                logits = self.features_and_logits(model, pixel_values)[1]
            else:
                logits = model.classifier(pixel_values=pixel_values).logits
            loss = (self._source_loss(model, logits, labels) if model.training
                    else classification_loss(logits, labels, self.label_smoothing))
            return {"loss": loss, "logits": logits}
        n_source = pixel_values.shape[0]
        loss_fn = model.aux["transfer"]
        if loss_fn.target_views == 2:  # e.g. FixMatch: a strong view of the same target images, same forward
            target_pixel_values = torch.cat([target_pixel_values, loss_fn.second_view(target_pixel_values)])
        features, logits = self.features_and_logits(model, torch.cat([pixel_values, target_pixel_values]))
        f_s, f_t = features[:n_source], features[n_source:]
        logits_s, logits_t = logits[:n_source], logits[n_source:]
        cls_loss = self._source_loss(model, logits_s, labels)
        if self.class_weights is not None and loss_fn.uses_source_weight:
            loss_fn.source_weight = model.aux["pada"].weights[labels]
        try:
            transfer = loss_fn(f_s, f_t, logits_s, logits_t)
        finally:
            loss_fn.source_weight = None
        weight = self.trade_off()
        loss = cls_loss + weight * transfer
        self.last_metrics = {"cls_loss": float(cls_loss.detach()), "transfer_loss": float(transfer.detach()),
                             "trade_off": weight, **getattr(self.transfer_loss, "last_metrics", {})}
        return {"loss": loss, "logits": logits_s}

    @torch.no_grad()
    def estimate_class_weights(self, model) -> None:
        """PADA: mean target softmax over the target training images (eval mode, no RNG drawn)."""
        if self._pada_images is None:
            self._pada_images = self.unlabelled_eval_datasets()["target_unlabelled"]
        images, bs = self._pada_images, self.training_args.per_device_eval_batch_size
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

    def finish(self, model, trainer) -> None:
        if self.args.adabn:
            self._adabn()
        if self.bottleneck is not None and not self.folded:
            fold_into(self.bottleneck, self.backbone.head)
            self.folded = True

    def _adabn(self) -> None:
        target = subset(self.data.target["train"], self.args.max_train_samples, self.training_args.seed)
        images = ImageDomainDataset(target, eval_transform(self.backbone.data_config), with_labels=False)
        loader = DataLoader(images, batch_size=self.training_args.per_device_eval_batch_size,
                            collate_fn=collate_images)
        device = next(self.backbone.model.parameters()).device
        if self.bottleneck is None or self.folded:
            adapt_batchnorm(self.backbone.model, loader,
                            forward=lambda m, batch: m(pixel_values=batch["pixel_values"]), device=device)
            return
        both = nn.ModuleList([self.backbone.model, self.bottleneck])  # the bottleneck's BN is adapted too
        adapt_batchnorm(both, loader, device=device,
                        forward=lambda m, batch: m[1](self.backbone.features_and_logits(batch["pixel_values"])[0]))

    def label_space_weighting(self) -> dict:
        """What was done about source classes the target lacks (for results.json and the card)."""
        if self.class_weights is not None:
            return pada_summary(self.class_weights, self.data.label_names, self.args.pada_every)
        return {"method": self.args.partial_weighting, "excluded_classes": list(self.excluded),
                "excluded_source_rows": int(getattr(self, "excluded_rows", 0))}

    def describe(self) -> dict:
        return {**super().describe(), "trade_off": self.args.trade_off,
                "trade_off_schedule": self.args.trade_off_schedule,
                "trade_off_warmup": self.args.trade_off_warmup if self.args.trade_off_schedule == "linear" else None,
                "bottleneck_dim": self.args.bottleneck_dim, "target_batch_ratio": self.args.target_batch_ratio,
                "partial_weighting": self.label_space_weighting(),
                "method_args": self.args.method_args, "adabn": self.args.adabn,
                "paper": getattr(self.transfer_loss, "paper", "")}
