"""Gradient reversal (Ganin & Lempitsky 2015, https://arxiv.org/abs/1409.7495) and its schedule.

Forward is the identity; backward multiplies the incoming gradient by ``-coeff``. Placed between the
feature extractor and a domain discriminator, it lets one backward pass train the discriminator to
separate the domains while pushing the features to confuse it.

The coefficient follows the DANN ramp ``lambda_p = hi * (2 / (1 + exp(-alpha * p)) - 1)``, with an
optional hold at 0 for the first ``hold`` fraction of training (``p`` is then rescaled over the
rest). The hold matters in practice: if the adversarial weight rises while the classifier is still at
chance, features can become trivially domain-invariant and never recover.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.autograd import Function


class GradientReverseFunction(Function):
    """``y = x`` forward, ``dL/dx = -coeff * dL/dy`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Functional form of :class:`GradientReverseFunction`."""
    return GradientReverseFunction.apply(x, coeff)


def grl_coefficient(progress: float, alpha: float = 10.0, hi: float = 1.0, hold: float = 0.0) -> float:
    """GRL coefficient at training progress ``progress`` in [0, 1].

    0 while ``progress <= hold``; then ``hi * (2 / (1 + exp(-alpha * q)) - 1)`` with
    ``q = (progress - hold) / (1 - hold)``. A pure function of its arguments.
    """
    if not 0.0 <= hold <= 1.0:
        raise ValueError(f"hold must be in [0, 1], got {hold}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    p = min(max(float(progress), 0.0), 1.0)
    if p <= hold or hold >= 1.0:
        return 0.0
    q = (p - hold) / (1.0 - hold)
    return float(hi * (2.0 / (1.0 + math.exp(-alpha * q)) - 1.0))
