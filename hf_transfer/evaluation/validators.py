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
* :func:`dev`: Deep Embedded Validation (You et al., ICML 2019,
  http://proceedings.mlr.press/v97/you19a.html); needs source validation losses and features, so it
  has its own signature and is not in :data:`VALIDATORS`. Returned negated (DEV is a risk).

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


def dev(
    source_features: Matrix, source_losses: Matrix, target_features: Matrix, seed: int = 0, C: float = 1.0
) -> float:
    """Deep Embedded Validation, negated so that higher is better.

    A logistic-regression domain classifier on the pooled source-validation and target features
    (half of each domain to fit, the source-validation half it did not see to evaluate, as in the
    paper) gives density ratios ``w_i = n_s / n_t * P(t | x_i) / P(s | x_i)`` on held-out source
    validation samples; with ``L_i = w_i * loss_i``:
    ``DEV = mean(L) + eta * mean(w) - eta``, ``eta = -Cov(L, w) / Var(w)`` (control variate).
    ``source_losses``: per-sample losses of the model on the source validation set.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    fs = _tensor(source_features).numpy()
    ft = _tensor(target_features).numpy()
    ls = np.asarray(torch.as_tensor(source_losses).detach().cpu().double().numpy()).reshape(-1)
    if ls.shape[0] != fs.shape[0]:
        raise ValueError("source_losses must have one value per source sample")
    rng = np.random.default_rng(seed)
    ps, pt = rng.permutation(len(fs)), rng.permutation(len(ft))
    fit_s, val_s = ps[: len(fs) // 2], ps[len(fs) // 2 :]
    fit_t = pt[: max(len(ft) // 2, 1)]
    if len(fit_s) == 0 or len(val_s) == 0:
        raise ValueError("dev needs at least 2 source samples")
    x = np.concatenate([fs[fit_s], ft[fit_t]])
    y = np.concatenate([np.zeros(len(fit_s)), np.ones(len(fit_t))])
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(scaler.transform(x), y)
    prob = clf.predict_proba(scaler.transform(fs[val_s]))
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    w = (len(fit_s) / len(fit_t)) * prob[:, 1] / prob[:, 0]
    weighted = w * ls[val_s]
    var_w = np.var(w, ddof=1) if len(w) > 1 else 0.0
    eta = 0.0 if var_w <= 1e-12 else -np.cov(weighted, w)[0, 1] / var_w
    risk = weighted.mean() + eta * w.mean() - eta
    return float(-risk)


VALIDATORS: dict[str, Callable[..., float]] = {
    "entropy": entropy_score,
    "im": information_maximization,
    "snd": snd,
}
"""Validators over target logits alone (name -> fn(logits) -> float, higher is better)."""

__all__ = ["VALIDATORS", "entropy_score", "information_maximization", "snd", "dev"]
