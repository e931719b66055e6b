"""Unsupervised validators: choose a checkpoint from TARGET predictions, without target labels.

Every function returns a Python float for which **higher is better**, so each can back the
Trainer's ``metric_for_best_model`` with ``greater_is_better=True``. Inputs are numpy arrays or
torch tensors of shape (N, C) (logits, or features for ``snd(..., from_logits=False)``).

* :func:`entropy_score`: ``-1/N sum_i H(p_i)``. Rewards confident predictions; it is also maximal when
  every sample collapses onto one class, so do not use it alone.
* :func:`information_maximization`: ``H(1/N sum_i p_i) - 1/N sum_i H(p_i)`` (in [0, log C]): confident
  AND diverse; maximal for one-hot predictions balanced over the classes.
* :func:`snd`: Soft Neighborhood Density (Saito et al., ICCV 2021, https://arxiv.org/abs/2108.10860).
  Note: fully collapsed predictions (all identical) maximise SND too (every neighbour is equally
  close); the paper relies on training not collapsing. Pair it with ``information_maximization``.

This module imports nothing else from ``hf_transfer``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: what the validators take: a numpy array or a tensor of shape (N, C)
Matrix = np.ndarray | torch.Tensor


def _tensor(x: Matrix) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to("cpu", torch.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, C) array, got shape {tuple(t.shape)}")
    return t


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def entropy_score(logits: Matrix) -> float:
    """Negative mean prediction entropy (nats); higher is better, at most 0."""
    p = F.softmax(_tensor(logits), dim=1)
    return float(-_entropy(p).mean())


def information_maximization(logits: Matrix) -> float:
    """``H(mean p) - mean H(p)`` (nats), in [0, log C]; higher is better."""
    p = F.softmax(_tensor(logits), dim=1)
    return float(_entropy(p.mean(0)) - _entropy(p).mean())


def snd(
    features_or_logits: Matrix, temperature: float = 0.05, from_logits: bool = True, chunk_size: int = 1024
) -> float:
    """Soft Neighborhood Density; higher is better.

    ``z_i``: softmax of the logits (``from_logits=True``, the paper's default) or the raw features,
    L2-normalised. ``S_ij = z_i . z_j`` for ``j != i``; ``P_i = softmax_j(S_ij / temperature)``;
    ``SND = 1/N sum_i H(P_i)``: high when each sample has many close neighbours (dense clusters).
    Computed in row chunks (memory ``chunk_size x N``). Needs N >= 2.
    """
    z = _tensor(features_or_logits)
    if from_logits:
        z = F.softmax(z, dim=1)
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    if n < 2:
        raise ValueError("snd needs at least 2 samples")
    total = 0.0
    for start in range(0, n, chunk_size):
        rows = z[start : start + chunk_size]
        sim = rows @ z.T / temperature
        idx = torch.arange(rows.shape[0])
        sim[idx, idx + start] = float("-inf")
        p = F.softmax(sim, dim=1)
        total += float(_entropy(p).sum())
    return total / n


VALIDATORS: dict[str, Callable[..., float]] = {
    "entropy": entropy_score,
    "im": information_maximization,
    "snd": snd,
}
"""Validators over target logits alone (name -> fn(logits) -> float, higher is better)."""

__all__ = ["VALIDATORS", "entropy_score", "information_maximization", "snd"]
