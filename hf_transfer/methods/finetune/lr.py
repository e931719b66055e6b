"""Discriminative learning rates and layer-wise learning-rate decay, per named group.

For the ordered groups ``stem, stage_0 .. stage_N, [neck], head`` the learning rate of group ``g`` is

    lr_g = learning_rate * (backbone_lr_scale if g != head else 1) * layer_decay ** distance(g)

where ``distance`` counts groups back from the head (head 0, the group before it 1, ...): the
stem, furthest from the task, moves least (ULMFiT's discriminative fine-tuning; timm/BEiT's
``layer_decay``). With ``layer_decay = 1`` this is plain discriminative LR (head vs backbone).

Why not timm's ``param_groups_layer_decay``: on timm backbones it gives these same per-parameter rates, but
on a transformers backbone it puts every parameter in one layer (no decay at all: 38 of a tiny ViT's 40
parameters get another rate), it leaves out parameters with ``requires_grad=False`` (gradual unfreezing
keeps them in the optimizer from the start), it knows no ``backbone_lr_scale`` and its ``lr_scale`` is
applied by timm's schedulers only, not by the Trainer's. The no-decay rule is timm's (1-d tensors and
biases), as in :meth:`hf_transfer.training.modes.base.TransferMode.optimizer_groups`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch import nn

from hf_transfer.errors import TransferConfigError


def group_learning_rates(
    group_names: list[str], lr: float, backbone_lr_scale: float = 1.0, layer_decay: float | None = None
) -> OrderedDict[str, float]:
    """The learning rate of each named group, by the formula above (head: ``lr``; others scaled and decayed)."""
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise TransferConfigError(f"layer_decay={layer_decay}: must be in (0, 1].")
    decay = 1.0 if layer_decay is None else float(layer_decay)
    n = len(group_names)
    out: OrderedDict[str, float] = OrderedDict()
    for i, name in enumerate(group_names):
        scale = 1.0 if name == "head" else backbone_lr_scale
        out[name] = lr * scale * decay ** (n - 1 - i)
    return out


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def optimizer_groups_by_name(
    groups: OrderedDict[str, list[tuple[str, nn.Parameter]]],
    lrs: dict[str, float],
    weight_decay: float | dict[str, float],
    include: Callable[[nn.Parameter], bool] | None = None,
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one per named group and decay / no-decay, equal ones merged.

    Groups with the same learning rate and weight decay are merged into one (see :func:`merge_equal_groups`);
    ``include(param) -> bool`` selects the parameters (default: those with ``requires_grad``). Every group carries
    its ``name`` and ``lr``."""
    include = include or (lambda p: p.requires_grad)
    out: list[dict[str, Any]] = []
    for gname, params in groups.items():
        wd = weight_decay[gname] if isinstance(weight_decay, dict) else weight_decay
        decay = [p for n, p in params if include(p) and not _no_decay(n, p)]
        no_decay = [p for n, p in params if include(p) and _no_decay(n, p)]
        if decay:
            out.append({"params": decay, "lr": lrs[gname], "weight_decay": wd, "name": f"{gname}/decay"})
        if no_decay:
            out.append({"params": no_decay, "lr": lrs[gname], "weight_decay": 0.0, "name": f"{gname}/no_decay"})
    return merge_equal_groups(out)


def merge_equal_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Optimizer groups with equal hyper-parameters merged (names joined with ``+``, first-seen order).

    Why: the optimizer's fused/foreach kernels run once per group, at a fixed cost per call; a backbone split
    into a dozen named groups that all train at one rate paid it a dozen times per step (the AdamW step was
    13x the stock recipe's on a small CPU model). The update of every parameter is the same either way
    (AdamW is per tensor; schedulers scale every group's rate by the same factor); groups whose rates or
    decay differ stay apart."""
    merged: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
    for group in groups:
        key = tuple(sorted((k, v) for k, v in group.items() if k not in ("params", "name")))
        if key in merged:
            merged[key]["params"] = merged[key]["params"] + list(group["params"])
            merged[key]["name"] += "+" + group["name"]
        else:
            merged[key] = {**group, "params": list(group["params"])}
    return list(merged.values())
