"""Transferability scores: how well a frozen backbone's features suit a labelled target, before training.

Each score takes ``(features [N, D], labels [N])`` (LEEP and NCE also ``source_probs [N, Z]``, the
backbone's own softmax over its Z source classes) and returns one float; higher means more
transferable. Everything is computed in float64; labels may be any integers (they are re-indexed, so a
renaming of the classes never changes a score). Public import: ``from hf_transfer.transferability
import logme, leep, nce, hscore, sfda, knn_accuracy``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hf_transfer.errors import TransferConfigError

__all__ = ["hscore", "knn_accuracy", "leep", "logme", "nce", "sfda"]


# -- input checks -----------------------------------------------------------------------------------


def _features(features: npt.ArrayLike, n: int | None = None) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise TransferConfigError(f"features must be a non-empty 2-D array [N, D], got shape {f.shape}.")
    if n is not None and f.shape[0] != n:
        raise TransferConfigError(f"features have {f.shape[0]} rows but labels have {n}.")
    if not np.isfinite(f).all():
        raise TransferConfigError("features contain NaN or inf values.")
    return f


def _labels(labels: npt.ArrayLike) -> tuple[np.ndarray, int]:
    """Labels re-indexed to 0..C-1 (in sorted order of the given values) and C; at least two classes."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise TransferConfigError(f"labels must be a non-empty 1-D array [N], got shape {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer):
        raise TransferConfigError(f"labels must be integers (class ids), got dtype {y.dtype}.")
    classes, y = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise TransferConfigError("labels hold a single class: a transferability score needs at least two.")
    return y.reshape(-1), len(classes)


def _source_probs(source_probs: npt.ArrayLike, n: int) -> np.ndarray:
    p = np.asarray(source_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n:
        raise TransferConfigError(f"source_probs must be [N, Z] with N = {n} rows, got shape {p.shape}.")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise TransferConfigError(
            "source_probs must be probabilities (non-negative rows summing to 1): apply a softmax to the logits."
        )
    return p


def _onehot(y: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(y), num_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


# -- LogME ------------------------------------------------------------------------------------------


def logme(features: npt.ArrayLike, labels: npt.ArrayLike, *, tol: float = 1e-6, max_iter: int = 100) -> float:
    """LogME: the log marginal evidence of a Bayesian linear model from features to each one-hot label column.

    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
    ICML 2021. For each class c, ``y = 1[label == c]`` is modelled as ``y = F w + N(0, 1/beta)`` with the
    prior ``w ~ N(0, I/alpha)``; alpha, beta maximise the evidence by the paper's fixed-point iteration
    (Algorithm 1), starting at ``alpha = beta = 1``::

        A = alpha I + beta F^T F,  m = beta A^-1 F^T y,  gamma = sum_i beta s_i / (alpha + beta s_i)
        alpha <- gamma / m^T m,    beta <- (N - gamma) / ||F m - y||^2

    (s_i the eigenvalues of F^T F), until alpha/beta changes by less than ``tol`` (relative). Then
    ``L = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log|A|``,
    and LogME is the mean over classes of ``L / N``. One SVD of F serves every class and all classes
    iterate at once (a class stops being updated once it has converged). Features are used as given
    (no centring), as in the paper. The two denominators are floored at ``1e-12 N`` so that features
    that interpolate the labels exactly (N <= D) give a large finite score instead of a division by zero.
    """
    y, num_classes = _labels(labels)
    f = _features(features, len(y))
    n, d = f.shape
    Y = _onehot(y, num_classes)
    # the eigen-basis of F^T F: from the smaller of the two Gram matrices
    if n > d:
        s2, v = np.linalg.eigh(f.T @ f)
        s2 = np.clip(s2, 0.0, None)
        keep = s2 > s2.max() * max(n, d) * np.finfo(np.float64).eps
        s2, v = s2[keep], v[:, keep]
        z = (v.T @ (f.T @ Y)) / np.sqrt(s2)[:, None]  # = U^T Y, U = F V / s
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        keep = s > s.max() * max(n, d) * np.finfo(np.float64).eps
        s2, u = s[keep] ** 2, u[:, keep]
        z = u.T @ Y
    k = len(s2)
    z2 = z**2  # [k, C]
    y_perp = np.clip((Y**2).sum(0) - z2.sum(0), 0.0, None)  # the part of y outside the span of F
    floor = 1e-12 * n
    s2c = s2[:, None]

    def terms(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        den = alpha + beta * s2c
        m2 = (beta**2 * s2c * z2 / den**2).sum(0)
        res2 = (alpha**2 * z2 / den**2).sum(0) + y_perp
        gamma = (beta * s2c / den).sum(0)
        return m2, res2, gamma

    alpha, beta = np.ones(num_classes), np.ones(num_classes)
    active = np.ones(num_classes, dtype=bool)
    for _ in range(max_iter):
        m2, res2, gamma = terms(alpha, beta)
        new_alpha = gamma / np.maximum(m2, floor)
        new_beta = (n - gamma) / np.maximum(res2, floor)
        done = np.abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha = np.where(active, new_alpha, alpha)
        beta = np.where(active, new_beta, beta)
        active &= ~done
        if not active.any():
            break
    m2, res2, _ = terms(alpha, beta)
    logdet = np.log(alpha + beta * s2c).sum(0) + (d - k) * np.log(alpha)
    evidence = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - logdet / 2
    )
    return float(np.mean(evidence / n))


# -- LEEP, NCE --------------------------------------------------------------------------------------


def leep(features: npt.ArrayLike, labels: npt.ArrayLike, source_probs: npt.ArrayLike) -> float:
    """LEEP: the log expected empirical prediction of the source classifier turned into a target one.

    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020. With theta(x) the source model's softmax over its Z classes:
    ``P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z``, ``P(y | z) = P(y, z) / sum_y' P(y', z)``, and
    ``LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z`` (<= 0). ``features`` are not used (they are
    accepted, or None, so every score has the same call); only their row count is checked.
    """
    y, num_classes = _labels(labels)
    if features is not None:
        _features(features, len(y))
    theta = _source_probs(source_probs, len(y))
    n = len(y)
    joint = (_onehot(y, num_classes).T @ theta) / n  # [C, Z]
    pz = joint.sum(0, keepdims=True)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z); 0 where no mass on z
    eep = (theta * cond[y]).sum(1)  # sum_z P(y_i | z) theta_iz
    return float(np.mean(np.log(np.maximum(eep, np.finfo(np.float64).tiny))))


def nce(features: npt.ArrayLike, labels: npt.ArrayLike, source_probs: npt.ArrayLike) -> float:
    """NCE: the negative conditional entropy of the target labels given the source model's hard labels.

    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
    With ``z_i = argmax_z theta(x_i)_z`` and the empirical joint ``P(y, z) = #{i: y_i = y, z_i = z} / N``:
    ``NCE = -H(Y | Z) = sum_{y, z} P(y, z) log (P(y, z) / P(z))`` (<= 0). ``features``: as in :func:`leep`.
    """
    y, num_classes = _labels(labels)
    if features is not None:
        _features(features, len(y))
    theta = _source_probs(source_probs, len(y))
    z = theta.argmax(1)
    joint = np.zeros((num_classes, theta.shape[1]))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(y)
    pz = np.broadcast_to(joint.sum(0, keepdims=True), joint.shape)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / pz[nz])).sum())


# -- H-score ----------------------------------------------------------------------------------------


def hscore(features: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """H-score: how much of the feature covariance the class-conditional means explain.

    Bao, Li, Huang, Wang, Zhang, Xia, Wang, "An Information-Theoretic Approach to Transferability in
    Task Transfer Learning", ICIP 2019: ``H(f) = tr(cov(f)^-1 cov(E[f | y]))``, where ``E[f | y]`` replaces
    each row by its class mean. With the biased covariances (the N vs N - 1 factor cancels) this is
    ``sum_c (N_c / N) (mu_c - mu)^T cov(f)^+ (mu_c - mu)``; the pseudo-inverse drops eigen-directions of
    cov(f) below ``max(N, D) eps`` of the largest (a singular covariance when N <= D or features are
    collinear), so the score stays finite.
    """
    y, num_classes = _labels(labels)
    f = _features(features, len(y))
    n, d = f.shape
    f = f - f.mean(0)
    w, v = np.linalg.eigh(f.T @ f / n)
    keep = w > max(w.max(), 0.0) * max(n, d) * np.finfo(np.float64).eps
    if not keep.any():
        return 0.0
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    means = (_onehot(y, num_classes).T @ f) / counts[:, None]  # class means of the centred features
    proj = (means @ v[:, keep]) / np.sqrt(w[keep])  # whitened
    return float((counts / n) @ (proj**2).sum(1))


# -- SFDA -------------------------------------------------------------------------------------------


def _fda_proba(
    x: np.ndarray, y: np.ndarray, num_classes: int, shrinkage: float | None, a: float
) -> tuple[np.ndarray, float]:
    """Class posteriors of the regularised Fisher classifier fitted on (x, y); and the shrinkage used."""
    n, d = x.shape
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    priors = counts / n
    means = (_onehot(y, num_classes).T @ x) / counts[:, None]
    centred = x - means[y]
    sw = centred.T @ centred / n  # within-class scatter, sum_c pi_c cov_c (biased)
    if shrinkage is None:
        top = float(np.linalg.eigvalsh(sw)[-1])
        shrinkage = max(math.exp(-a * top), 1e-10)
    scale = max(float(np.trace(sw)) / d, np.finfo(np.float64).tiny)
    reg = (1.0 - shrinkage) * sw
    reg[np.diag_indices(d)] += shrinkage * scale
    # all D Fisher directions U (U^T S_w' U = I) give U U^T = S_w'^-1: the Bayes discriminant in the
    # Fisher space is x^T S_w'^-1 mu_c - mu_c^T S_w'^-1 mu_c / 2 + log pi_c
    coef = np.linalg.solve(reg, means.T)  # [D, C]
    logits = x @ coef - 0.5 * np.einsum("cd,dc->c", means, coef) + np.log(priors)
    return _softmax(logits), shrinkage


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sfda(features: npt.ArrayLike, labels: npt.ArrayLike, *, a: float = 5.0) -> float:
    """SFDA: accuracy-like score of a regularised Fisher classifier on self-challenged (harder) features.

    Shao, Zhao, Ge, Ge, Shan, Liu, Luo, "Not All Models Are Equal: Predicting Model Transferability in a
    Self-challenging Fisher Space", ECCV 2022 (the reference implementation's choices where the paper
    leaves them open):

    1. Regularised FDA: within-class scatter ``S_w = sum_c pi_c cov_c``, regularised as
       ``S_w' = (1 - lambda) S_w + lambda (tr S_w / D) I`` with ``lambda = max(exp(-a sigma_max(S_w)), 1e-10)``,
       ``a = 5`` (sigma_max computed exactly here, by three power iterations in the authors' code).
       The class posterior is the Bayes rule in the Fisher space ``x~ = U^T x``:
       ``p(c | x) = softmax_c(x~^T mu~_c - |mu~_c|^2 / 2 + log pi_c)``.
    2. Self-challenging ConfMix: ``p = softmax(p(. | x))`` (a softening), then each sample moves toward
       the mean of the OTHER classes' means by how unsure the classifier is of its label:
       ``x^_i = p_{y_i} x_i + (1 - p_{y_i}) mu'_{y_i}``, ``mu'_c = mean_{c' != c} mu_c'``.
    3. The same classifier (same lambda) refitted on x^; ``SFDA = 1/N sum_i p(y_i | x^_i)`` (in [0, 1]).
    """
    y, num_classes = _labels(labels)
    f = _features(features, len(y))
    prob, shrinkage = _fda_proba(f, y, num_classes, None, a)
    prob = _softmax(prob)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    means = (_onehot(y, num_classes).T @ f) / counts[:, None]
    others = (means.sum(0, keepdims=True) - means) / (num_classes - 1)
    p_true = prob[np.arange(len(y)), y][:, None]
    mixed = p_true * f + (1.0 - p_true) * others[y]
    prob, _ = _fda_proba(mixed, y, num_classes, shrinkage, a)
    return float(prob[np.arange(len(y)), y].mean())


# -- k-NN -------------------------------------------------------------------------------------------


def knn_accuracy(
    features: npt.ArrayLike, labels: npt.ArrayLike, *, k: int = 5, normalize: bool = True, chunk: int = 1024
) -> float:
    """Leave-one-out k-nearest-neighbour accuracy on the frozen features (in [0, 1]).

    Each row is classified by the majority label of its k nearest OTHER rows (Euclidean distance, on
    L2-normalised rows when ``normalize``, i.e. cosine similarity); a tie between classes goes to the
    tied class of the nearest neighbour. The plain baseline that matched the dedicated scores in a 2025
    comparison. Distances are computed ``chunk`` rows at a time (memory ``chunk x N``).
    """
    y, num_classes = _labels(labels)
    f = _features(features, len(y))
    n = len(y)
    if n < 2:
        raise TransferConfigError("knn_accuracy needs at least two rows.")
    if k < 1:
        raise TransferConfigError(f"knn_accuracy: k must be >= 1, got {k}.")
    k = min(k, n - 1)
    if normalize:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    sq = (f**2).sum(1)
    correct = 0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = np.arange(start, stop)
        dist = sq[rows, None] + sq[None, :] - 2.0 * f[rows] @ f.T
        dist[np.arange(len(rows)), rows] = np.inf  # leave the row itself out
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(dist, nearest, 1), axis=1, kind="stable")
        nbr = y[np.take_along_axis(nearest, order, 1)]  # [b, k] labels, nearest first
        votes = np.zeros((len(rows), num_classes))
        np.add.at(votes, (np.repeat(np.arange(len(rows)), k), nbr.reshape(-1)), 1.0)
        tied = np.take_along_axis(votes, nbr, 1) == votes.max(1, keepdims=True)
        pred = nbr[np.arange(len(rows)), tied.argmax(1)]
        correct += int((pred == y[rows]).sum())
    return correct / n
