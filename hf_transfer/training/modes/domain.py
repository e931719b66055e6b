"""Domain adaptation: labelled source + unlabelled target, one forward pass over both.

A source-free method (``shot``, ``nrc``, ``aad``: no ``--source``) trains on the target images alone, each batch
with its rows' indices, from the trained classifier ``--backbone`` (its own classes are the label space); see
:mod:`hf_transfer.methods.domain.source_free`. The ``source_only`` baseline trains on source batches alone
(target images never enter training, not even BatchNorm statistics). Otherwise: loss = cross-entropy on the
source batch + w(p) * the method's alignment term over (source features, target features[, logits]), with ``w(p)`` the
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
with or without a bottleneck. Each shared option is a collaborator of :mod:`.domain_parts`.

``--streaming``: the source's and the target's training splits are read as streams, per process, endless and
zipped (:class:`~hf_transfer.data.stream_pair.PairedStreams`): every batch carries the source rows and the
``target_batch_ratio`` target images a map-style batch carries. The label spaces are matched by name from the
streams' ``ClassLabel`` names. Scored as without streaming: the source's and the target's test splits (loaded
map-style), and, for the unsupervised validators, a head of the target stream (``max_eval_samples`` rows, else
:data:`~hf_transfer.data.stream.TARGET_HEAD_ROWS`, read once before training; see
:func:`~hf_transfer.data.stream.stream_head`) in place of the whole target training split. What needs a whole
target split (source-free methods, ``adabn``, ``partial_weighting=pada``) is refused with the arguments.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import datasets
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainingArguments

from hf_transfer.config import TransferArguments
from hf_transfer.config.checks import check_backbone_needs, check_source_free_backbone
from hf_transfer.data.align import label_lookup
from hf_transfer.data.kshot import subset
from hf_transfer.data.paired import IndexedRows, PairedDataset, collate_paired
from hf_transfer.data.stream import RESUME_BEHAVIOUR
from hf_transfer.data.stream_pair import PairedStreams
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.metrics import UNLABELLED
from hf_transfer.methods.domain import build_loss, trade_off_weight
from hf_transfer.methods.domain.source_free import SourceFreeLoss
from hf_transfer.methods.domain.step import CLASSIFIER, FEATURES, METHOD, SteppedLoss
from hf_transfer.methods.finetune.lr import group_learning_rates, optimizer_groups_by_name
from hf_transfer.methods.registry import get_method
from hf_transfer.models.backbones import Backbone
from hf_transfer.training.modes import domain_parts
from hf_transfer.training.modes.base import TransferData, TransferMode, TransferModel, register_mode
from hf_transfer.training.modes.common import (
    classification_loss,
    eval_dataset,
    eval_images,
    input_transform,
    streamed_images,
    train_images,
)


@register_mode("domain")
class DomainMode(TransferMode):
    """Labelled source + unlabelled target (see the module docstring)."""

    uses_unlabelled_target = True

    def __init__(
        self, args: TransferArguments, backbone: Backbone, data: TransferData, training_args: TrainingArguments
    ) -> None:
        super().__init__(args, backbone, data, training_args)
        #: the method adapts the trained classifier --backbone with no source data (SHOT, NRC, AaD)
        self.source_free = not get_method(self.method_name).needs.source_data
        if data.source is None and not self.source_free:
            raise TransferConfigError("mode=domain needs a source domain (--source).")
        check_backbone_needs(args, backbone.model, backbone.model_id)  # adabn: BatchNorm (run.py checked the config)
        if self.source_free:  # plan checked its config; now the loaded classifier itself
            check_source_free_backbone(args, backbone.label_names, backbone.head_pretrained)
        self.progress = 0.0
        self.bottleneck = domain_parts.Bottleneck(backbone, args.bottleneck_dim) if args.bottleneck_dim else None
        feature_dim = args.bottleneck_dim or backbone.feature_dim
        try:
            assert isinstance(args.method_args, dict), "TransferArguments.__post_init__ parses method_args to a dict"
            self.transfer_loss = build_loss(self.method_name, feature_dim, backbone.num_labels, **args.method_args)
        except (TypeError, ValueError) as err:
            raise TransferConfigError(f"method={args.method!r}, method_args={args.method_args}: {err}") from err
        self.weighting = (
            domain_parts.SourceClasses("none", [])  # no source rows to weight
            if self.source_free
            else domain_parts.label_space_weighting(
                args,
                data,
                backbone.num_labels,
                lambda: self.unlabelled_eval_datasets()["target_unlabelled"],
                training_args.per_device_eval_batch_size,
            )
        )
        self.refresh: domain_parts.SourceFreeRefresh | None = None
        self.drift: domain_parts.FeatureDrift | None = None
        if isinstance(self.transfer_loss, SourceFreeLoss):
            self._set_up_source_free(self.transfer_loss)

    def _set_up_source_free(self, loss: SourceFreeLoss) -> None:
        """Size the method's per-row state, freeze the source hypothesis where the method does, and prepare its
        pass over the target training images and the feature-drift measure."""
        loss.allocate(len(self._target_train_rows()))
        if loss.frozen_head:
            for p in self.backbone.head.parameters():
                p.requires_grad_(False)
        self.refresh = domain_parts.SourceFreeRefresh(
            loss,
            lambda: eval_dataset(self, self._target_train_rows()),
            self.training_args.per_device_eval_batch_size,
            self.features_and_logits,
        )
        self.drift = domain_parts.FeatureDrift(self.backbone, self.data, self.args, self.training_args)

    def _target_train_rows(self) -> datasets.Dataset:
        """The target training rows a source-free run trains on (in the training set's order), labels hidden."""
        rows = subset(self.data.target["train"], self.args.max_train_samples, self.training_args.seed)
        return rows.remove_columns("label").add_column("label", [UNLABELLED] * len(rows))

    def build_model(self) -> TransferModel:
        """The backbone with the method's modules, the bottleneck and PADA's weights beside it."""
        aux: dict[str, nn.Module] = {"transfer": self.transfer_loss}
        if self.bottleneck is not None:
            aux["bottleneck"] = self.bottleneck.head
        aux.update(self.weighting.aux)
        return TransferModel(self, self.backbone.model, aux=aux, input_transform=input_transform(self))

    def optimizer_groups(self, model: TransferModel, lr: float, weight_decay: float) -> list[dict]:
        """Discriminative learning rates with task mode's group logic.

        The backbone's groups at ``lr * backbone_lr_scale``; its head, the bottleneck and the method's own
        modules (e.g. the domain discriminator) at ``lr``."""
        groups = self.backbone.param_groups()
        lrs = group_learning_rates(list(groups), lr, self.backbone_lr_scale)
        aux = OrderedDict((f"aux.{name}", list(module.named_parameters())) for name, module in model.aux.items())
        lrs.update({name: lr for name in aux})
        out = optimizer_groups_by_name(OrderedDict([*groups.items(), *aux.items()]), lrs, weight_decay)
        grouped = {id(p) for g in out for p in g["params"]}
        missed = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
        if missed:  # a trainable module outside the backbone and model.aux would silently never train
            raise RuntimeError(f"Trainable parameters in no optimizer group: {missed[:5]}")
        return out

    def train_dataset(self) -> Dataset:
        """Source rows, paired with target images unless the method trains on none (the baseline)."""
        if self.data.source_stream is not None:
            return self._streamed_train_dataset()
        if self.source_free:  # the target images alone, each with its row index (the method's per-row state)
            return IndexedRows(train_images(self, self.data.target["train"], with_labels=False))
        assert self.data.source is not None  # checked in __init__
        source = train_images(self, self.weighting.source_rows(self.data.source["train"], self.data.label_names))
        if not get_method(self.method_name).needs.target_images:  # the baseline sees none (as in TLlib)
            return source
        target = train_images(self, self.data.target["train"], with_labels=False)
        return PairedDataset(source, target, target_ratio=self.args.target_batch_ratio)

    def _streamed_train_dataset(self) -> Dataset:
        """``--streaming``: the source stream (its labels re-encoded to the run's classes by name), zipped with the
        target stream's images (labels dropped) unless the method trains on none (the baseline)."""
        source_stream, target_stream = self.data.source_stream, self.data.train_stream
        assert source_stream is not None and target_stream is not None, "run_data streams both domains"
        names = self.data.label_names
        source = streamed_images(self, source_stream, self.weighting.stream_label_map(source_stream.label_names, names))
        if not get_method(self.method_name).needs.target_images:
            return source
        target_map = label_lookup(target_stream.label_names, names)
        target = streamed_images(self, target_stream, target_map, with_labels=False, seed_offset=1)
        paired = PairedStreams(source, target, target_ratio=self.args.target_batch_ratio)
        paired.check_loader_workers(self.training_args.dataloader_num_workers)
        return paired

    def eval_datasets(self) -> dict[str, Dataset]:
        """The source's and the target's test splits."""
        return eval_images(self)

    def unlabelled_eval_datasets(self) -> dict[str, Dataset]:
        """Target TRAIN images with their labels hidden (-1): for unsupervised checkpoint selection.

        ``--streaming``: the head of the target stream read before training (see the module docstring)."""
        target = subset(self.data.target["train"], self.args.max_eval_samples, self.training_args.seed)
        hidden = target.remove_columns("label").add_column("label", [UNLABELLED] * len(target))
        return {"target_unlabelled": eval_dataset(self, hidden)}

    def callbacks(self) -> list[TrainerCallback]:
        """PADA's re-estimation of the class weights, when it is on; a source-free method's target pass."""
        return [*self.weighting.callbacks(), *([self.refresh] if self.refresh is not None else [])]

    def domain_gap(self, max_samples: int = 500) -> dict:
        """MMD and proxy A-distance between source and target features of the current model.

        Source-free (no source): between the target features of the starting model and of the current one."""
        if self.drift is not None:
            return self.drift.measure(max_samples)
        return domain_parts.domain_gap(self.backbone, self.data, self.args, self.training_args, max_samples)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Paired source/target batches (``target_batch_ratio`` target images per source image)."""
        return collate_paired(examples, self.args.target_batch_ratio)

    def set_progress(self, progress: float) -> None:
        """The progress drives the trade-off schedule and the method's own schedules."""
        self.progress = min(max(progress, 0.0), 1.0)
        self.transfer_loss.set_progress(self.progress)

    def trade_off(self) -> float:
        """The transfer-loss weight now (a pure function of the progress)."""
        return trade_off_weight(
            self.progress, self.args.trade_off, self.args.trade_off_schedule, self.args.trade_off_warmup
        )

    def features_and_logits(
        self, model: TransferModel, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The features the losses see and the logits.

        The bottleneck's when there is one and it is not folded yet; through the method's
        ``classifier_input`` (e.g. AFN's dropout) before the classifier, when it has one."""
        head_input = self.transfer_loss.classifier_input if self.transfer_loss.changes_classifier_input else None
        bottleneck = self.bottleneck is not None and not self.bottleneck.folded
        features, logits = self.backbone.features_and_logits(
            pixel_values, model=model.classifier, head_input=None if bottleneck else head_input
        )
        if self.bottleneck is not None and bottleneck:
            features, logits = self.bottleneck.head(features, head_input)
        return features, logits

    def _source_loss(self, model: TransferModel, logits_s: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The training loss of the labelled source rows (PADA's class weights when on)."""
        weights = self.weighting.class_weight(model, logits_s.dtype)
        loss = classification_loss(logits_s, labels, self.label_smoothing, weight=weights)
        assert loss is not None, "a training batch carries its source labels"
        return loss

    def stepped_method(self, model: TransferModel) -> SteppedLoss | None:
        """The method's module when it owns its training step (MCD, SDAT), else None."""
        return self.transfer_loss if isinstance(self.transfer_loss, SteppedLoss) else None

    def _classifier(self, model: TransferModel) -> nn.Module:
        """The layer that maps the losses' features to logits: the bottleneck's head, or the backbone's."""
        if self.bottleneck is not None and not self.bottleneck.folded:
            return self.bottleneck.head.fc
        return self.backbone.head

    def parameter_parts(self, model: TransferModel) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by part, for a stepped method's passes.

        ``classifier``: the layer that gives the logits; ``method``: the method's modules; ``features``: every
        other trainable parameter (the backbone below its head, a bottleneck's layers)."""
        classifier = [p for p in self._classifier(model).parameters() if p.requires_grad]
        method = [p for p in self.transfer_loss.parameters() if p.requires_grad]
        taken = {id(p) for p in classifier + method}
        features = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
        return {FEATURES: features, CLASSIFIER: classifier, METHOD: method}

    def _phase_forward(
        self,
        model: TransferModel,
        phase: str,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        target_pixel_values: torch.Tensor,
    ) -> dict[str, Any]:
        """One pass of a stepped method over the paired batch: the features (without gradient in the
        method's frozen-feature phases) and both domains' logits go to its ``phase_loss``."""
        n_source = pixel_values.shape[0]
        loss_fn = self.transfer_loss
        assert isinstance(loss_fn, SteppedLoss), f"method {self.args.method!r} has no passes of its own"
        pixels = torch.cat([pixel_values, target_pixel_values])
        if phase in loss_fn.frozen_feature_phases:
            with torch.no_grad():
                features = self.features_and_logits(model, pixels)[0]
            logits = self._classifier(model)(features)
        else:
            features, logits = self.features_and_logits(model, pixels)
        loss, metrics = loss_fn.phase_loss(
            phase,
            features[:n_source],
            features[n_source:],
            logits[:n_source],
            logits[n_source:],
            lambda source_logits: self._source_loss(model, source_logits, labels),
            self.trade_off(),
        )
        return {"loss": loss, "logits": logits[:n_source], "metrics": metrics}

    def forward(
        self,
        model: TransferModel,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        phase: str | None = None,
        row_index: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """The loss and logits of one batch.

        Training: source loss + weighted alignment term over one paired batch (or a stepped method's pass);
        evaluation: one domain's loss and logits."""
        assert pixel_values is not None
        if row_index is not None:  # a source-free training batch: target images and their rows
            return self._source_free_forward(model, pixel_values, row_index)
        if phase is not None:
            assert target_pixel_values is not None, "a stepped method's pass takes a paired batch"
            return self._phase_forward(model, phase, pixel_values, labels, target_pixel_values)
        if target_pixel_values is None:  # evaluation (or source_only): one domain, no alignment term
            if self.bottleneck is not None and not self.bottleneck.folded:
                logits = self.features_and_logits(model, pixel_values)[1]
            else:
                logits = model.classifier(pixel_values=pixel_values).logits
            loss = (
                self._source_loss(model, logits, labels)
                if model.training
                else classification_loss(logits, labels, self.label_smoothing)
            )
            return {"loss": loss, "logits": logits}
        n_source = pixel_values.shape[0]
        loss_fn = self.transfer_loss
        if loss_fn.target_views == 2:  # e.g. FixMatch: a strong view of the same target images, same forward
            target_pixel_values = torch.cat([target_pixel_values, loss_fn.second_view(target_pixel_values)])
        features, logits = self.features_and_logits(model, torch.cat([pixel_values, target_pixel_values]))
        f_s, f_t = features[:n_source], features[n_source:]
        logits_s, logits_t = logits[:n_source], logits[n_source:]
        cls_loss = self._source_loss(model, logits_s, labels)
        assert labels is not None, "a paired training batch carries its source labels (_source_loss checked)"
        source_weight = self.weighting.source_weight(model, labels)
        extra = {"source_weight": source_weight} if source_weight is not None and loss_fn.uses_source_weight else {}
        transfer = loss_fn(f_s, f_t, logits_s, logits_t, **extra)
        weight = self.trade_off()
        metrics = {
            "cls_loss": float(cls_loss.detach()),
            "transfer_loss": float(transfer.detach()),
            "trade_off": weight,
            **loss_fn.last_metrics,
        }
        return {"loss": cls_loss + weight * transfer, "logits": logits_s, "metrics": metrics}

    def _source_free_forward(
        self, model: TransferModel, pixel_values: torch.Tensor, row_index: torch.Tensor
    ) -> dict[str, Any]:
        """The source-free method's term on the target batch (there is no source loss and no trade-off)."""
        features, logits = self.features_and_logits(model, pixel_values)
        transfer = self.transfer_loss(features[:0], features, logits[:0], logits, rows=row_index)
        metrics = {"transfer_loss": float(transfer.detach()), **self.transfer_loss.last_metrics}
        return {"loss": transfer, "logits": logits, "metrics": metrics}

    def finish(self, model: TransferModel, trainer: Any) -> None:
        """AdaBN on the target's training images, then the bottleneck folded into the backbone's head."""
        if self.args.adabn:
            target = subset(self.data.target["train"], self.args.max_train_samples, self.training_args.seed)
            domain_parts.adabn(self.backbone, self.bottleneck, target, self.training_args.per_device_eval_batch_size)
        if self.bottleneck is not None:
            self.bottleneck.fold()

    def label_space_weighting(self) -> dict:
        """What was done about source classes the target lacks (for results.json and the card)."""
        return self.weighting.summary(self.data.label_names)

    def describe(self) -> dict:
        """The shared options and the method's, for results.json and the card."""
        if self.source_free:  # none of the source-side options acts
            loss = self.transfer_loss
            return {
                **super().describe(),
                "source_free": {
                    "starting_model": self.args.backbone,
                    "frozen_head": bool(getattr(loss, "frozen_head", False)),
                    "last_target_pass": self.refresh.last if self.refresh is not None else {},
                },
                "method_args": self.args.method_args,
                "paper": getattr(loss, "paper", ""),
            }
        streaming = {}
        if self.data.source_stream is not None and self.data.train_stream is not None:
            streaming["streaming"] = {
                "enabled": True,
                "resume": RESUME_BEHAVIOUR,
                "source": self.data.source_stream.info,
                "target": self.data.train_stream.info,
                "unlabelled_target": "target.unlabelled_head: the first rows of the target stream (seeded shuffle "
                "buffer), read once before training, scored by the unsupervised validators",
            }
        return {
            **super().describe(),
            **streaming,
            "trade_off": self.args.trade_off,
            "trade_off_schedule": self.args.trade_off_schedule,
            "trade_off_warmup": self.args.trade_off_warmup if self.args.trade_off_schedule == "linear" else None,
            "bottleneck_dim": self.args.bottleneck_dim,
            "target_batch_ratio": self.args.target_batch_ratio,
            "partial_weighting": self.label_space_weighting(),
            "method_args": self.args.method_args,
            "adabn": self.args.adabn,
            "paper": getattr(self.transfer_loss, "paper", ""),
        }
