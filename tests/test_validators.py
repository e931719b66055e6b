"""Unsupervised validators and domain-gap measures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_transfer.evaluation.domain_gap import mmd_distance, proxy_a_distance
from hf_transfer.evaluation.validators import VALIDATORS, entropy_score, information_maximization, snd

N, C = 200, 5


def confident_balanced(seed=0, scale=8.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % C
    return scale * F.one_hot(y, C).double() + 0.5 * torch.randn(N, C, generator=g, dtype=torch.float64)


def scattered(seed=1, scale=3.0):
    return scale * torch.randn(N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


RANKING_CASES = [
    ("entropy", confident_balanced(), torch.zeros(N, C)),  # confident beats uniform
    ("im", confident_balanced(), torch.zeros(N, C)),
    ("im", confident_balanced(), scattered()),
    ("im", confident_balanced(), 8.0 * F.one_hot(torch.zeros(N, dtype=torch.long), C)),  # collapsed
    ("snd", confident_balanced(), scattered()),  # dense clusters beat scattered predictions
]


def test_every_validator_has_its_direction_checked():
    """Checkpoint selection takes the highest score (greater_is_better): every registered validator must be
    shown to rank better predictions higher below."""
    assert set(VALIDATORS) == {name for name, _, _ in RANKING_CASES} == {"entropy", "im", "snd"}


@pytest.mark.parametrize("name,better,worse", RANKING_CASES)
def test_validator_ranks_good_predictions_higher(name, better, worse):
    fn = VALIDATORS[name]
    assert fn(better) > fn(worse)
    assert isinstance(fn(better.numpy()), float)
    assert fn(better.numpy()) == pytest.approx(fn(better.float()), rel=1e-4)  # numpy and torch alike


def test_entropy_and_im_values():
    uniform = np.zeros((10, C))
    assert entropy_score(uniform) == pytest.approx(-math.log(C))
    assert information_maximization(uniform) == pytest.approx(0.0, abs=1e-12)
    one_hot = 50.0 * np.eye(C)
    assert entropy_score(one_hot) == pytest.approx(0.0, abs=1e-9)
    assert information_maximization(one_hot) == pytest.approx(math.log(C))  # the maximum


def test_snd_on_features_and_its_collapse_blind_spot():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(C, 32, generator=g)
    clustered = centers[torch.arange(N) % C] + 0.1 * torch.randn(N, 32, generator=g)
    noise = torch.randn(N, 32, generator=g)
    assert snd(clustered, from_logits=False) > snd(noise, from_logits=False) + 0.5
    # each sample's soft neighbourhood ~ its own cluster: entropy ~ log(cluster size - 1)
    assert snd(clustered, from_logits=False) == pytest.approx(math.log(N / C - 1), abs=0.05)
    # documented limitation: identical (collapsed) outputs reach the maximum log(N - 1)
    assert snd(np.zeros((N, C))) == pytest.approx(math.log(N - 1))
    # chunking gives the same number
    assert snd(clustered, from_logits=False, chunk_size=7) == pytest.approx(snd(clustered, from_logits=False))


def test_validators_refuse_bad_shapes():
    with pytest.raises(ValueError):
        entropy_score(np.zeros(5))
    with pytest.raises(ValueError):
        snd(np.zeros((1, 3)))


# --------------------------------------------------------------------------- domain gap
def test_proxy_a_distance_zero_for_same_distribution_two_for_separated():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    assert proxy_a_distance(a, b) < 0.3
    far = rng.normal(size=(300, 16)) + 5.0
    assert proxy_a_distance(a, far) > 1.95
    mid = rng.normal(size=(300, 16)) + 0.3
    assert proxy_a_distance(a, b) < proxy_a_distance(a, mid) < proxy_a_distance(a, far)
    assert proxy_a_distance(a, mid, seed=3) == proxy_a_distance(a, mid, seed=3)  # deterministic


def test_mmd_distance_zero_for_same_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert mmd_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-12)
    vals = [mmd_distance(a, rng.normal(size=(200, 8)) + s) for s in (0.0, 0.5, 1.0, 3.0)]
    assert vals[0] < 0.02
    assert all(y > x for x, y in itertools.pairwise(vals)), vals
    assert isinstance(vals[0], float) and min(vals) >= 0
    assert mmd_distance(torch.as_tensor(a), torch.as_tensor(a + 1.0)) == pytest.approx(mmd_distance(a, a + 1.0))


def test_mmd_distance_is_scale_invariant_down_to_tiny_features():
    """The median bandwidth makes the report's MMD scale-free; features at initialisation can be tiny
    (pairwise squared distances ~1e-10), where a training-sized floor on the bandwidth changed it 10x."""
    import numpy as np

    from hf_transfer.evaluation.domain_gap import mmd_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(120, 16)), rng.normal(size=(120, 16)) + 0.3
    reference = mmd_distance(a, b)
    for scale in (1e-6, 1e3):
        assert abs(mmd_distance(a * scale, b * scale) - reference) < 1e-9 * max(reference, 1.0)
