"""The transferability scores against slow, literal transcriptions of their papers' equations, plus the
properties a ranking relies on: invariance to row order and class names, monotone in class separation."""

import math
from collections import Counter

import numpy as np
import pytest
from scipy import linalg

from hf_transfer.errors import TransferConfigError
from hf_transfer.transferability import hscore, knn_accuracy, leep, logme, nce, sfda

# -- slow, literal versions (one class / one sample at a time, explicit inverses) --------------------


def slow_logme(f, y, tol=1e-6, max_iter=100):
    """You et al. 2021, Algorithm 1, per class, with the explicit matrix A and its log-determinant."""
    f = np.asarray(f, np.float64)
    n, d = f.shape
    eig = np.linalg.eigvalsh(f.T @ f)
    out = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            a_mat = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a_mat, f.T @ t)
            gamma = sum(beta * s / (alpha + beta * s) for s in eig)
            new_alpha = gamma / max(m @ m, 1e-12 * n)
            new_beta = (n - gamma) / max(((f @ m - t) ** 2).sum(), 1e-12 * n)
            done = abs(new_alpha / new_beta - alpha / beta) <= tol * alpha / beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a_mat = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a_mat, f.T @ t)
        evidence = (
            n / 2 * math.log(beta)
            + d / 2 * math.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * ((f @ m - t) ** 2).sum()
            - alpha / 2 * m @ m
            - np.linalg.slogdet(a_mat)[1] / 2
        )
        out.append(evidence / n)
    return float(np.mean(out))


def slow_leep(y, theta):
    n, z_count = theta.shape
    classes = np.unique(y)
    joint = {(c, z): sum(theta[i, z] for i in range(n) if y[i] == c) / n for c in classes for z in range(z_count)}
    pz = {z: sum(joint[c, z] for c in classes) for z in range(z_count)}
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[y[i], z] / pz[z] * theta[i, z] for z in range(z_count)))
    return total / n


def slow_nce(y, theta):
    n = len(y)
    z = theta.argmax(1)
    pairs = Counter(zip(y.tolist(), z.tolist(), strict=True))
    zs = Counter(z.tolist())
    return sum(cnt / n * math.log((cnt / n) / (zs[zz] / n)) for (_, zz), cnt in pairs.items())


def slow_hscore(f, y):
    g = np.stack([f[y == y[i]].mean(0) for i in range(len(y))])  # E[f | y] per row
    return float(np.trace(np.linalg.pinv(np.cov(f, rowvar=False)) @ np.cov(g, rowvar=False)))


def slow_fda(x, y, lam=None, a=5.0):
    """Regularised FDA with the C - 1 leading Fisher directions (generalised eigenproblem), then Bayes."""
    classes = np.unique(y)
    n, d = x.shape
    mu = x.mean(0)
    means = np.stack([x[y == c].mean(0) for c in classes])
    priors = np.array([(y == c).mean() for c in classes])
    sw = sum(p * np.cov(x[y == c], rowvar=False, bias=True) for p, c in zip(priors, classes, strict=True))
    sb = sum(p * np.outer(m - mu, m - mu) for p, m in zip(priors, means, strict=True))
    if lam is None:
        lam = max(math.exp(-a * np.linalg.eigvalsh(sw).max()), 1e-10)
    sw_reg = (1 - lam) * sw + lam * np.trace(sw) / d * np.eye(d)
    evals, evecs = linalg.eigh(sb, sw_reg)
    u = evecs[:, np.argsort(evals)[::-1][: len(classes) - 1]]
    xt, mt = x @ u, means @ u
    logits = np.stack([xt @ mt[c] - mt[c] @ mt[c] / 2 + math.log(priors[c]) for c in range(len(classes))], 1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), lam


def slow_sfda(f, y):
    f = np.array(f, np.float64)
    prob, lam = slow_fda(f, y)
    prob = np.exp(prob) / np.exp(prob).sum(1, keepdims=True)
    classes = np.unique(y)
    means = {c: f[y == c].mean(0) for c in classes}
    for c in classes:
        other = np.mean([means[o] for o in classes if o != c], 0)
        for i in np.flatnonzero(y == c):
            f[i] = prob[i, c] * f[i] + (1 - prob[i, c]) * other
    prob, _ = slow_fda(f, y, lam)
    return float(np.mean([prob[i, y[i]] for i in range(len(y))]))


def slow_knn(f, y, k):
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    correct = 0
    for i in range(len(y)):
        dist = [(float(((f[i] - f[j]) ** 2).sum()), j) for j in range(len(y)) if j != i]
        nbr = [y[j] for _, j in sorted(dist)[:k]]
        votes = Counter(nbr)
        best = max(votes.values())
        pred = next(label for label in nbr if votes[label] == best)
        correct += pred == y[i]
    return correct / len(y)


# -- data -------------------------------------------------------------------------------------------


def blobs(n=60, d=6, classes=4, sep=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, d))
    return centres[y] * sep + rng.normal(size=(n, d)), y


def source_probs(y, z_count=7, sep=1.0, seed=0):
    """A source head whose class ``y mod Z`` fires on target class y, with strength ``sep`` over noise."""
    rng = np.random.default_rng(seed + 1)
    logits = rng.normal(size=(len(y), z_count))
    logits[np.arange(len(y)), y % z_count] += sep
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


FEATURE_SCORES = {"logme": logme, "hscore": hscore, "sfda": sfda, "knn": knn_accuracy}
SOURCE_SCORES = {"leep": leep, "nce": nce}


# -- agreement with the literal equations ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(40, 6), (12, 20)])  # N > D and N <= D (LogME's two bases)
def test_logme_matches_literal_algorithm(seed, shape):
    f, y = blobs(n=shape[0], d=shape[1], classes=3, seed=seed)
    assert logme(f, y) == pytest.approx(slow_logme(f, y), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leep_and_nce_match_literal_sums(seed):
    f, y = blobs(n=30, classes=3, seed=seed)
    theta = source_probs(y, z_count=5, sep=1.5, seed=seed)
    assert leep(f, y, theta) == pytest.approx(slow_leep(y, theta), rel=1e-10)
    assert nce(None, y, theta) == pytest.approx(slow_nce(y, theta), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hscore_matches_literal_trace(seed):
    f, y = blobs(n=50, d=5, seed=seed)
    assert hscore(f, y) == pytest.approx(slow_hscore(f, y), rel=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sfda_matches_literal_fisher_space(seed):
    """The closed form (all D directions, S_w'^-1) equals the C - 1 leading Fisher directions of the paper."""
    f, y = blobs(n=48, d=5, sep=0.8, seed=seed)
    assert sfda(f, y) == pytest.approx(slow_sfda(f, y), rel=1e-7)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_matches_literal_loop(k):
    f, y = blobs(n=45, d=4, classes=3, sep=0.7, seed=k)
    assert knn_accuracy(f, y, k=k, chunk=7) == pytest.approx(slow_knn(f, y, k))


# -- properties -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FEATURE_SCORES) + sorted(SOURCE_SCORES))
def test_invariant_to_row_order_and_class_names(name):
    f, y = blobs(n=64, classes=4, sep=1.0, seed=3)
    theta = source_probs(y, sep=1.0, seed=3)
    rng = np.random.default_rng(7)
    rows = rng.permutation(len(y))
    renamed = np.array([17, 3, 42, 8])[y]  # other ids, in another order
    cols = rng.permutation(theta.shape[1])
    if name in SOURCE_SCORES:
        fn = SOURCE_SCORES[name]
        base, moved = fn(f, y, theta), fn(f[rows], renamed[rows], theta[rows][:, cols])
    else:
        fn = FEATURE_SCORES[name]
        base, moved = fn(f, y), fn(f[rows], renamed[rows])
    assert moved == pytest.approx(base, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(FEATURE_SCORES) + sorted(SOURCE_SCORES))
def test_rises_when_classes_separate(name):
    values = []
    for sep in (0.3, 1.0, 3.0):
        f, y = blobs(n=120, d=8, classes=4, sep=sep, seed=5)
        if name in SOURCE_SCORES:
            values.append(SOURCE_SCORES[name](f, y, source_probs(y, sep=2 * sep, seed=5)))
        else:
            values.append(FEATURE_SCORES[name](f, y))
    assert values[0] < values[1] < values[2], values


def test_scores_are_finite_when_features_interpolate_labels():
    """N <= D (LogME's evidence would diverge, H-score's covariance is singular): still finite floats."""
    f, y = blobs(n=10, d=64, classes=2, seed=0)
    for fn in FEATURE_SCORES.values():
        assert math.isfinite(fn(f, y))


def test_wrong_inputs_name_the_problem():
    f, y = blobs(n=20, classes=2)
    with pytest.raises(TransferConfigError, match="at least two"):
        logme(f, np.zeros(20, dtype=int))
    with pytest.raises(TransferConfigError, match="rows"):
        hscore(f[:10], y)
    with pytest.raises(TransferConfigError, match="softmax"):
        leep(f, y, np.ones((20, 3)))
    with pytest.raises(TransferConfigError, match="integers"):
        sfda(f, y.astype(float))
