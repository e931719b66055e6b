"""Task adaptation: fine-tune the backbone with a new head on the target's labels.

Methods: ``full`` (everything trains), ``partial`` (the groups named in ``freeze`` stay frozen),
``linear`` (the whole backbone frozen, the head trained through the backbone every step: the
naive linear probe; the ``feature`` mode does the same from cached features, much faster).
``backbone_lr_scale`` gives discriminative learning rates: the head trains at ``learning_rate``,
every backbone group at ``learning_rate * backbone_lr_scale``.
"""

from __future__ import annotations

from ..errors import TransferConfigError
from .base import TransferMode, TransferModel, named_groups_to_optimizer, register_mode
from .common import classification_loss, eval_images, freeze_batchnorm_of_frozen, train_images
from ..data.paired import collate_images

TASK_METHODS = ("full", "partial", "linear")


def resolve_frozen_groups(spec: str | None, group_names: list[str]) -> list[str]:
    """``"stem,stage_0"`` -> group names; ``backbone`` = every group but the head."""
    if not spec:
        return []
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    out: list[str] = []
    for name in wanted:
        if name == "backbone":
            out.extend(g for g in group_names if g != "head")
        elif name in group_names:
            out.append(name)
        else:
            raise TransferConfigError(
                f"freeze={spec!r}: group {name!r} matches no parameters; groups are {group_names} (or 'backbone')."
            )
    if "head" in out:
        raise TransferConfigError("freeze: the head is always trained; remove 'head'.")
    return list(dict.fromkeys(out))


@register_mode("task")
class TaskMode(TransferMode):
    def __init__(self, args, backbone, data, training_args):
        super().__init__(args, backbone, data, training_args)
        if args.method not in TASK_METHODS:
            raise TransferConfigError(f"mode=task: unknown method {args.method!r}; choose one of {TASK_METHODS}.")
        groups = backbone.param_groups()
        if args.method == "linear":
            spec = "backbone"
        elif args.method == "partial":
            if not args.freeze:
                raise TransferConfigError("mode=task method=partial needs --freeze (e.g. 'stem,stage_0').")
            spec = args.freeze
        else:
            spec = args.freeze
        self.frozen_groups = resolve_frozen_groups(spec, list(groups))
        for name in self.frozen_groups:
            for _, p in groups[name]:
                p.requires_grad_(False)

    def build_model(self) -> TransferModel:
        return TransferModel(self, self.backbone.model)

    def train_dataset(self):
        return train_images(self, self.data.target["train"])

    def eval_datasets(self):
        return eval_images(self)

    def collate(self, examples):
        return collate_images(examples)

    def optimizer_groups(self, model, lr, weight_decay):
        groups = {name: [p for _, p in params] for name, params in self.backbone.param_groups().items()}
        lrs = {name: lr if name == "head" else lr * self.args.backbone_lr_scale for name in groups}
        return named_groups_to_optimizer(groups, model, lrs, weight_decay)

    def on_train_mode(self, model):
        freeze_batchnorm_of_frozen(model)

    def forward(self, model, pixel_values=None, labels=None, **_):
        logits = model.classifier(pixel_values=pixel_values).logits
        return {"loss": classification_loss(logits, labels), "logits": logits}
