"""Task adaptation: fine-tune the backbone with a new head on the target's labels.

Methods: ``full`` (everything trains), ``partial`` (the groups/patterns named in ``freeze`` stay
frozen), ``linear`` (the whole backbone frozen, the head trained through the backbone every step:
the naive linear probe; the ``feature`` mode does the same from cached features, much faster),
``lora`` (LoRA adapters through PEFT on per-architecture target modules + the new head; exported
as a self-sufficient adapter folder, see :mod:`hf_transfer.models.adapters`).

Strategies that compose with ``full``/``partial`` (*what* is decided here, *when* by callbacks):

- ``freeze``: group names (stem, stage_i, neck, backbone), globs or ``re:`` patterns over parameter
  names (:mod:`hf_transfer.methods.finetune.groups`);
- ``backbone_lr_scale`` (discriminative LR) and ``layer_decay`` (layer-wise LR decay)
  (:mod:`hf_transfer.methods.finetune.lr`);
- ``unfreeze_every`` / ``unfreeze_unit``: gradual unfreezing from the head backwards, a
  ``TrainerCallback`` returned by :meth:`TaskMode.callbacks` (:mod:`hf_transfer.methods.finetune.unfreeze`);
- ``regularizer``: ``l2sp`` or ``bss`` added to the loss (:mod:`hf_transfer.methods.finetune.regularizers`);
- ``k_shot``: k labelled target images per class (:mod:`hf_transfer.data.kshot`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainingArguments

from hf_transfer.config import TransferArguments
from hf_transfer.data.kshot import kshot
from hf_transfer.data.paired import collate_images
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.finetune.groups import freeze_parameters, select_parameters
from hf_transfer.methods.finetune.lp_ft import LpFtOptions, ProbeThenFineTune
from hf_transfer.methods.finetune.lr import group_learning_rates, optimizer_groups_by_name
from hf_transfer.methods.finetune.regularizers import BSS, L2SP, check_regularizer
from hf_transfer.methods.finetune.unfreeze import GradualUnfreezing
from hf_transfer.methods.registry import get_method
from hf_transfer.models.backbones import Backbone
from hf_transfer.training.modes.base import TransferData, TransferMode, TransferModel, register_mode
from hf_transfer.training.modes.common import (
    classification_loss,
    eval_images,
    freeze_batchnorm_of_frozen,
    input_transform,
    streamed_images,
    train_images,
)

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

#: a backbone's named parameter groups (:meth:`~hf_transfer.models.backbones.Backbone.param_groups`)
ParamGroups = OrderedDict[str, list[tuple[str, nn.Parameter]]]


@register_mode("task")
class TaskMode(TransferMode):
    """Fine-tune the backbone with a new head on the target's labels (see the module docstring)."""

    def __init__(
        self, args: TransferArguments, backbone: Backbone, data: TransferData, training_args: TrainingArguments
    ) -> None:
        super().__init__(args, backbone, data, training_args)
        method = get_method(self.method_name, "task")  # what it trains comes from its registration, not its name
        self.regularizer_name = check_regularizer(getattr(args, "regularizer", None))
        self.peft_model: PeftModel | None = None
        self.unfreezing: GradualUnfreezing | None = None
        self.regularizer: L2SP | BSS | None = None
        self._bss_features: torch.Tensor | None = None
        groups = backbone.param_groups()
        if method.adapters:
            self._setup_lora(args)
            return
        for name in method.required_options:  # also checked with the arguments; here for a mode built directly
            if not getattr(args, name, None):
                raise TransferConfigError(f"mode=task method={args.method} needs --{name}.")
        spec = args.freeze if method.needs.trainable_backbone else "backbone"
        selected = select_parameters(spec, groups)
        self.frozen_groups = list(selected)
        frozen_ids = {id(p) for params in selected.values() for _, p in params}
        freeze_parameters([(n, p) for params in selected.values() for n, p in params])
        self._frozen_ids = frozen_ids
        if getattr(args, "unfreeze_every", None):
            self._setup_unfreezing(groups, frozen_ids)
        options = method.options(args.method_args if isinstance(args.method_args, dict) else None)
        if isinstance(options, LpFtOptions):
            self._setup_lp_ft(groups, frozen_ids, options)
        if self.regularizer_name == "l2sp":
            body = [(n, p) for g, ps in groups.items() if g != "head" for n, p in ps]
            self.regularizer = L2SP(body, groups["head"], alpha=args.l2sp_alpha, beta=args.l2sp_beta)
        elif self.regularizer_name == "bss":
            self.regularizer = BSS(eta=args.bss_eta, k=args.bss_k)
            backbone.head.register_forward_hook(self._capture_features)

    # --- setup of the strategies ----------------------------------------------------------------
    def _setup_lora(self, args: Any) -> None:
        from hf_transfer.models.adapters import apply_lora

        if (
            args.freeze
            or getattr(args, "unfreeze_every", None)
            or self.regularizer_name
            or getattr(args, "layer_decay", None)
        ):
            raise TransferConfigError(
                f"method={args.method} trains only the adapters and the head: freeze, unfreeze_every, "
                "layer_decay and regularizer do not apply."
            )
        self.peft_model = apply_lora(
            self.backbone,
            r=args.lora_r,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            target_modules=args.lora_target_modules,
        )
        self.frozen_groups = ["backbone (LoRA adapters train)"]
        self._frozen_ids = set()

    def _setup_unfreezing(self, groups: ParamGroups, frozen_ids: set[int]) -> None:
        scheduled: ParamGroups = OrderedDict()
        for name in reversed([g for g in groups if g != "head"]):  # from the head backwards
            params = [(n, p) for n, p in groups[name] if id(p) not in frozen_ids]
            if params:
                scheduled[name] = params
        mask = int(getattr(self.training_args, "world_size", 1) or 1) > 1
        every = self.args.unfreeze_every
        assert every is not None, "set up only with --unfreeze_every (see __init__)"
        self.unfreezing = GradualUnfreezing(scheduled, every, self.args.unfreeze_unit, mask=mask)
        if not mask:
            for params in scheduled.values():
                for _, p in params:
                    p.requires_grad_(False)
        self._scheduled_ids = {id(p) for params in scheduled.values() for _, p in params}

    def _setup_lp_ft(self, groups: ParamGroups, frozen_ids: set[int], options: LpFtOptions) -> None:
        """LP-FT: the backbone (less what --freeze keeps frozen) is one group that unfreezes at the boundary."""
        body = [(n, p) for g, ps in groups.items() if g != "head" for n, p in ps if id(p) not in frozen_ids]
        mask = int(getattr(self.training_args, "world_size", 1) or 1) > 1
        self.unfreezing = ProbeThenFineTune(body, self.backbone.head, options, mask=mask)
        if not mask:
            for _, p in body:
                p.requires_grad_(False)
        self._scheduled_ids = {id(p) for _, p in body}

    def _capture_features(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
        self._bss_features = inputs[0]  # the pooled features of the current forward (used by BSS)

    # --- hooks ----------------------------------------------------------------------------------
    def callbacks(self) -> list[TrainerCallback]:
        """Trainer callbacks this mode needs (gradual unfreezing); pass them to the Trainer."""
        return [self.unfreezing] if self.unfreezing is not None else []

    def build_model(self) -> TransferModel:
        """The backbone itself (its new head included), with the fast path's on-device augmentation."""
        return TransferModel(self, self.backbone.model, input_transform=input_transform(self))

    def train_dataset(self) -> Dataset:
        """The target's training images (``k_shot`` of them per class when asked)."""
        if self.data.train_stream is not None:
            return streamed_images(self, self.data.train_stream)
        ds = self.data.target["train"]
        if k_shot := getattr(self.args, "k_shot", None):
            ds = kshot(ds, k_shot, self.training_args.seed)
        return train_images(self, ds)

    def eval_datasets(self) -> dict[str, Dataset]:
        """The labelled test images of each domain."""
        return eval_images(self)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """A batch of images and labels."""
        return collate_images(examples)

    def group_learning_rates(self, lr: float) -> OrderedDict[str, float]:
        """The learning rate of each backbone group: ``backbone_lr_scale`` and ``layer_decay`` applied to ``lr``."""
        return group_learning_rates(
            list(self.backbone.param_groups()), lr, self.backbone_lr_scale, getattr(self.args, "layer_decay", None)
        )

    def optimizer_groups(self, model: TransferModel, lr: float, weight_decay: float) -> list[dict]:
        """The trainable groups at their learning rates (LoRA: adapters and head at ``lr``; L2-SP: no decay)."""
        groups = self.backbone.param_groups()
        if self.peft_model is not None:  # LoRA: the adapters + the head at learning_rate
            lrs = {name: lr for name in groups}
            return optimizer_groups_by_name(groups, lrs, weight_decay)
        lrs = self.group_learning_rates(lr)
        if self.regularizer_name == "l2sp":
            weight_decay = 0.0  # L2-SP replaces weight decay (its beta term covers the head)
        if self.unfreezing is not None:
            # every scheduled parameter is in the optimizer from the start (resume-safe, see strategies.unfreeze)
            keep = self._scheduled_ids
            return optimizer_groups_by_name(
                groups, lrs, weight_decay, include=lambda p: p.requires_grad or id(p) in keep
            )
        return optimizer_groups_by_name(groups, lrs, weight_decay)

    def on_train_mode(self, model: TransferModel) -> None:
        """Keep the BatchNorm layers of frozen (and not yet unfrozen) groups in eval mode."""
        freeze_batchnorm_of_frozen(model)
        if self.unfreezing is not None and self.unfreezing.mask:
            _batchnorm_eval_for(model, self.unfreezing.frozen_parameter_ids())
        if isinstance(self.unfreezing, ProbeThenFineTune) and self.unfreezing.in_probe_stage:
            model.classifier.eval()  # LP-FT's probe: fixed features (no BatchNorm update, dropout or drop-path)
            self.backbone.head.train()

    def set_progress(self, progress: float) -> None:
        """Refuse a run whose gradual unfreezing was never attached to the Trainer (nothing would unfreeze)."""
        if self.unfreezing is not None and not self.unfreezing.attached:
            raise TransferConfigError(
                "unfreeze_every is set but the gradual-unfreezing callback is not attached to the Trainer: pass "
                "TaskMode.callbacks() as Trainer callbacks (prepare_run does)."
            )

    def regularization(self, model: TransferModel, out: dict[str, Any]) -> dict[str, Any]:
        """Add the regulariser's penalty to ``out['loss']`` (training only)."""
        if self.regularizer is None or out.get("loss") is None or not model.training:
            return out
        if self.regularizer_name == "bss":
            if self._bss_features is None:
                return out
            penalty = self.regularizer(self._bss_features)
            self._bss_features = None
        else:
            penalty = self.regularizer()
        metrics = {"cls_loss": float(out["loss"].detach()), "reg_loss": float(penalty.detach())}
        return {**out, "loss": out["loss"] + penalty, "metrics": metrics}

    def describe(self) -> dict:
        """What the run used, with the trainable parameter count and the strategies' settings."""
        out = super().describe()
        out["trainable_parameters"] = sum(
            p.numel()
            for p in self.backbone.model.parameters()
            if p.requires_grad or id(p) in getattr(self, "_scheduled_ids", ())
        )
        out["total_parameters"] = sum(p.numel() for p in self.backbone.model.parameters())
        strategies = {
            "layer_decay": getattr(self.args, "layer_decay", None),
            "regularizer": self.regularizer_name,
            "k_shot": getattr(self.args, "k_shot", None),
        }
        if self.regularizer_name == "l2sp":
            strategies.update(l2sp_alpha=self.args.l2sp_alpha, l2sp_beta=self.args.l2sp_beta)
        elif self.regularizer_name == "bss":
            strategies.update(bss_eta=self.args.bss_eta, bss_k=self.args.bss_k)
        if isinstance(self.unfreezing, ProbeThenFineTune):
            strategies["lp_ft"] = {
                "probe_steps": self.unfreezing.boundary,
                "probe_lr_scale": self.unfreezing.options.probe_lr_scale,
            }
        elif self.unfreezing is not None:
            strategies["gradual_unfreezing"] = {
                "every": self.args.unfreeze_every,
                "unit": self.args.unfreeze_unit,
                "order": list(self.unfreezing.groups),
            }
        if self.peft_model is not None:
            from peft import LoraConfig

            cfg = self.peft_model.peft_config["default"]
            assert isinstance(cfg, LoraConfig), "apply_lora configures a LoRA adapter named 'default'"
            targets = cfg.target_modules
            assert targets is not None and not isinstance(targets, str), "apply_lora names the modules, not a regex"
            strategies["lora"] = {
                "r": cfg.r,
                "alpha": cfg.lora_alpha,
                "dropout": cfg.lora_dropout,
                "target_modules": sorted(targets),
                "rule": getattr(self.peft_model, "hf_transfer_rule", None),
            }
        out["strategies"] = strategies
        if self.data.train_stream is not None:
            out["streaming"] = {"enabled": True, **self.data.train_stream.info}
        return out

    # --- export (run.py routes here for adapter runs) ---------------------------------------------
    @property
    def exports_adapter(self) -> bool:
        """Whether the run exports a LoRA adapter (with its merged model) instead of a plain model."""
        return self.peft_model is not None

    def export(self, output_dir: str, results: dict) -> dict:
        """Write the LoRA run's folder (the ``--publish`` form) and return what it wrote."""
        from hf_transfer.models.adapter_export import export_lora

        if self.peft_model is None:
            raise ValueError("TaskMode.export writes a LoRA run's adapter; this run trains none (see exports_adapter)")
        return export_lora(self.peft_model, self.backbone, output_dir, results=results, publish=self.args.publish)

    def forward(
        self,
        model: TransferModel,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """The classification loss (plus the regulariser's penalty while training) and the logits."""
        logits = model.classifier(pixel_values=pixel_values).logits
        out = {"loss": classification_loss(logits, labels, self.label_smoothing), "logits": logits}
        return self.regularization(model, out)


def _batchnorm_eval_for(model: nn.Module, param_ids: set[int]) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and all(id(p) in param_ids for p in params):
                module.eval()
