"""Domain-gap measures between source and target feature sets (numbers to report, not losses).

* :func:`proxy_a_distance`: ``2 * (1 - 2 * err)`` of a linear domain classifier (Ben-David et al.,
  2007/2010; used as in DANN, https://arxiv.org/abs/1505.07818): 0 when the domains cannot be told
  apart, 2 when they are perfectly separable.
* :func:`mmd_distance`: squared MMD with a multi-kernel Gaussian (bandwidths around the median
  pairwise distance), biased estimator, so it is >= 0 and 0 for identical samples: DAN's
  :func:`~hf_transfer.methods.domain.mmd.mk_mmd` in float64, the one MMD of the package.

Both take numpy arrays (or anything ``np.asarray`` accepts) of shape (N, D).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from hf_transfer.methods.domain.mmd import mk_mmd


def _array(x: npt.ArrayLike | torch.Tensor) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape(a.shape[0], -1) if a.ndim != 2 else a
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got shape {a.shape}")
    return a


def _subsample(a: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or len(a) <= n:
        return a
    return a[rng.choice(len(a), n, replace=False)]


def proxy_a_distance(
    f_s: npt.ArrayLike | torch.Tensor,
    f_t: npt.ArrayLike | torch.Tensor,
    seed: int = 0,
    test_size: float = 0.5,
    C: float = 1.0,
    max_samples: int | None = 5000,
) -> float:
    """Proxy A-distance ``2 * (1 - 2 * err)``, clipped to [0, 2].

    Pools the (standardised) features with domain labels, splits them into stratified train/test
    halves (``seed``), fits a logistic regression and measures its test error ``err``. Up to
    ``max_samples`` per domain are used. A classifier worse than chance (possible by noise for
    identical domains) gives 0.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    xs, xt = _subsample(_array(f_s), max_samples, rng), _subsample(_array(f_t), max_samples, rng)
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"feature dims differ: {xs.shape[1]} vs {xt.shape[1]}")
    x = np.concatenate([xs, xt])
    y = np.concatenate([np.zeros(len(xs), dtype=int), np.ones(len(xt), dtype=int)])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(x_tr), y_tr)
    err = float(np.mean(clf.predict(scaler.transform(x_te)) != y_te))
    return float(np.clip(2.0 * (1.0 - 2.0 * err), 0.0, 2.0))


def mmd_distance(
    f_s: npt.ArrayLike | torch.Tensor,
    f_t: npt.ArrayLike | torch.Tensor,
    num_kernels: int = 5,
    kernel_mul: float = 2.0,
    max_samples: int | None = 2000,
    seed: int = 0,
) -> float:
    """Squared multi-kernel MMD (biased V-statistic, >= 0) between the two feature sets.

    Gaussian kernels ``exp(-||a - b||^2 / s_u)``, ``s_u = s_0 * kernel_mul^(u - K//2)``, ``s_0`` the
    median pairwise squared distance of the pooled sample; at most ``max_samples`` per domain.
    """
    rng = np.random.default_rng(seed)
    xs, xt = _subsample(_array(f_s), max_samples, rng), _subsample(_array(f_t), max_samples, rng)
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"feature dims differ: {xs.shape[1]} vs {xt.shape[1]}")
    mmd = mk_mmd(
        torch.from_numpy(xs),
        torch.from_numpy(xt),
        num_kernels,
        kernel_mul,
        bandwidth="midpoint_median",
        estimator="biased",
        bandwidth_floor=1e-12,
    )
    return float(max(mmd.item(), 0.0))


__all__ = ["proxy_a_distance", "mmd_distance"]
