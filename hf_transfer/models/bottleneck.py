"""A bottleneck between the backbone and a new head (as in TLlib), foldable into one plain Linear.

    z = BatchNorm1d(Linear(feature_dim, d)(x)),    logits = Linear(d, K)(z)

TLlib's bottleneck is ``Linear -> BatchNorm1d -> ReLU``. The ReLU is left out ON PURPOSE: without it
the eval-mode head is affine end to end, so :func:`fold_bottleneck` turns it into ONE exact
``Linear(feature_dim, K)`` that replaces the backbone's own classifier at export. The exported
folder then has the backbone's stock architecture and loads with
``AutoModelForImageClassification`` / ``pipeline`` / timm, with no custom code. Alignment losses see
``z`` (the d-dim bottleneck features), which is where the bottleneck matters: the BatchNorm
standardises the features the discrepancy terms compare.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class BottleneckHead(nn.Module):
    """``x -> (z, logits)``: the bottleneck features and the class logits."""

    def __init__(self, feature_dim: int, bottleneck_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = nn.Linear(feature_dim, bottleneck_dim)
        self.bn = nn.BatchNorm1d(bottleneck_dim)
        self.fc = nn.Linear(bottleneck_dim, num_classes)

    def forward(
        self, x: torch.Tensor, head_input: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logits)``; ``head_input`` (e.g. a dropout) is applied to ``z`` before the last Linear."""
        z = self.bn(self.bottleneck(x))
        if head_input is not None:
            z = head_input(z)
        return z, self.fc(z)


def _bias(linear: nn.Linear) -> torch.Tensor:
    """The bias of ``linear``, zeros when it has none."""
    return linear.bias if linear.bias is not None else torch.zeros(linear.out_features, device=linear.weight.device)


@torch.no_grad()
def fold_bottleneck(head: BottleneckHead) -> tuple[torch.Tensor, torch.Tensor]:
    """The single Linear equal to ``head`` in eval mode: (weight [K, feature_dim], bias [K]).

    With ``s = gamma / sqrt(running_var + eps)``: ``W = W2 diag(s) W1`` and
    ``b = W2 (s * (b1 - running_mean) + beta) + b2``; computed in float64.
    """
    bn = head.bn
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bottleneck: the BatchNorm keeps no running statistics, so eval mode has none to fold.")
    w1, b1 = head.bottleneck.weight.double(), _bias(head.bottleneck).double()
    w2, b2 = head.fc.weight.double(), _bias(head.fc).double()
    gamma = bn.weight.double() if bn.affine else torch.ones_like(b1)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(b1)
    s = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = w2 @ (s[:, None] * w1)
    bias = w2 @ (s * (b1 - bn.running_mean.double()) + beta) + b2
    return weight, bias


@torch.no_grad()
def fold_into(head: BottleneckHead, linear: nn.Linear) -> None:
    """Write the folded head into ``linear`` (the backbone's own classifier), in its dtype and device."""
    weight, bias = fold_bottleneck(head)
    if linear.weight.shape != weight.shape:
        raise ValueError(f"cannot fold a {tuple(weight.shape)} head into a Linear of {tuple(linear.weight.shape)}")
    linear.weight.copy_(weight.to(linear.weight.dtype))
    if linear.bias is None:
        raise ValueError("the backbone's classifier has no bias; the folded head needs one")
    linear.bias.copy_(bias.to(linear.bias.dtype))
