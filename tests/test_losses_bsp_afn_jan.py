"""BSP, AFN and JAN: each loss against a hand computation on a tiny tensor, and the sign of its gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_transfer.config import arguments_from_dict
from hf_transfer.methods.domain import build_loss
from hf_transfer.methods.domain.afn import l2_preserving_dropout, stepwise_feature_norm
from hf_transfer.methods.domain.bsp import spectral_penalty
from hf_transfer.methods.domain.jan import jmmd
from hf_transfer.methods.domain.mmd import mk_mmd
from hf_transfer.training.run import prepare_run

from conftest import tiny_args

C = 3


# --------------------------------------------------------------------------- BSP
def test_spectral_penalty_is_the_sum_of_the_largest_squared_singular_values():
    f_s = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # singular values 3, 1
    f_t = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # singular values 2, 0
    assert spectral_penalty(f_s, 1).item() == pytest.approx(9.0)
    assert spectral_penalty(f_s, 2).item() == pytest.approx(10.0)
    assert spectral_penalty(f_t, 1).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        spectral_penalty(f_s, 0)


def test_bsp_is_dann_plus_beta_times_the_penalty_and_the_features_minimise_it():
    torch.manual_seed(0)
    loss = build_loss("bsp", feature_dim=2, num_classes=C, hold=1.0, beta=0.5).eval()  # GRL held at 0
    f_s = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    f_t = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    out = loss(f_s, f_t)
    with torch.no_grad():
        dann = loss.dann(f_s, f_t)
    assert out.item() == pytest.approx(dann.item() + 0.5 * (9.0 + 4.0), rel=1e-6)
    assert loss.last_metrics["bsp"] == pytest.approx(13.0)
    out.backward()
    # with the reversal coefficient at 0 only the penalty reaches the features, NOT reversed:
    # d sigma_1^2 / dF = 2 sigma_1 u_1 v_1^T = 2 * 3 * e_1 e_1^T, times beta
    torch.testing.assert_close(f_s.grad, torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    # a descent step on the features lowers the penalty
    stepped = (f_s - 0.1 * f_s.grad).detach()
    assert spectral_penalty(stepped, 1) < spectral_penalty(f_s.detach(), 1)


def test_bsp_source_weights_scale_the_source_rows():
    loss = build_loss("bsp", feature_dim=2, num_classes=C, hold=0.0, beta=1.0).eval()
    f_s = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    f_t = torch.zeros(2, 2)
    loss(f_s, f_t, source_weight=torch.tensor([0.25, 1.0]))
    assert loss.last_metrics["bsp"] == pytest.approx(2.25)  # rows [1.5, 0] and [0, 1]: sigma_1 = 1.5
    loss(f_s, f_t, source_weight=torch.tensor([0.0, 1.0]))
    assert loss.last_metrics["bsp"] == pytest.approx(1.0)  # a zero weight removes the row


# --------------------------------------------------------------------------- AFN
def test_stepwise_feature_norm_value_and_gradient_by_hand():
    f = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)  # norms 5 and 1
    out = stepwise_feature_norm(f, delta=1.0)
    assert out.item() == pytest.approx(1.0)  # (||f|| - (||f|| + 1))^2 = 1 for every sample, whatever f is
    out.backward()
    # d/df mean_i (||f_i|| - r_i)^2 = 2 (||f_i|| - r_i) f_i / ||f_i|| / n = -2 * delta * unit_i / 2
    torch.testing.assert_close(f.grad, torch.tensor([[-0.6, -0.8], [0.0, -1.0]]))


def test_afn_loss_enlarges_both_domains_norms_step_by_step():
    loss = build_loss("afn", feature_dim=4, num_classes=C, delta=0.5)
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(8, 4, generator=g).requires_grad_(True)
    f_t = (0.1 * torch.randn(8, 4, generator=g)).requires_grad_(True)
    out = loss(f_s, f_t)
    assert out.item() == pytest.approx(2 * 0.5**2)  # one term per domain, each delta^2
    assert loss.last_metrics["target_norm"] < loss.last_metrics["source_norm"]
    out.backward()
    lr = 0.1
    for f in (f_s, f_t):
        before = f.detach().norm(dim=1)
        after = (f - lr * f.grad).detach().norm(dim=1)
        # each norm grows by lr * 2 * delta / n, along the feature's own direction
        torch.testing.assert_close(after - before, torch.full((8,), lr * 2 * 0.5 / 8))


def test_l2_preserving_dropout_keeps_the_expected_squared_norm():
    x = torch.ones(20_000, 1)
    torch.manual_seed(0)
    y = l2_preserving_dropout(x, 0.5, training=True)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / math.sqrt(0.5)))
    assert y.pow(2).mean().item() == pytest.approx(1.0, abs=0.03)
    assert l2_preserving_dropout(x, 0.5, training=False) is x


def test_afn_dropout_reaches_the_classifier_in_training_only(tmp_path):
    """The domain mode passes the classifier's input through AFN's dropout; evaluation sees the plain features."""
    args = tiny_args(tmp_path, source="builtin:digits-printed", mode="domain", method="afn", trade_off=0.05)
    run = prepare_run(*arguments_from_dict(args))
    x = torch.randn(4, 3, 32, 32)
    run.model.train()
    torch.manual_seed(0)
    features, logits = run.mode.features_and_logits(run.model, x)
    plain = run.backbone.features_and_logits(x, model=run.model.classifier)[0]  # same batch statistics
    kept, alive = features != 0, plain != 0
    assert (kept & alive).sum() < 0.75 * alive.sum() and kept.sum() > 0.25 * alive.sum()  # about half dropped
    torch.testing.assert_close(features[kept], plain[kept] / math.sqrt(0.5))  # L2-preserving scale
    head = run.backbone.head
    torch.testing.assert_close(logits, F.linear(features, head.weight, head.bias))  # the head saw them
    run.model.eval()
    eval_features, eval_logits = run.mode.features_and_logits(run.model, x)
    plain, plain_logits = run.backbone.features_and_logits(x, model=run.model.classifier)
    torch.testing.assert_close(eval_features, plain)
    torch.testing.assert_close(eval_logits, plain_logits)


# --------------------------------------------------------------------------- JAN
def _gauss(a: list[float], b: list[float], s: float) -> float:
    return math.exp(-sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / s)


def test_jmmd_against_a_hand_computation():
    f_s, f_t = [[0.0], [1.0]], [[2.0], [4.0]]
    g_s, g_t = [[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]
    # pooled feature points 0, 1, 2, 4: off-diagonal squared distances 1, 4, 16, 1, 9, 4 (each twice);
    # torch's median of the 12 values (the lower middle one) is 4
    s_f, s_g = 4.0, 2 * 0.92**2
    points = [(f, g) for f, g in zip(f_s + f_t, g_s + g_t, strict=True)]

    def k(i: int, j: int) -> float:
        (fa, ga), (fb, gb) = points[i], points[j]
        return _gauss(fa, fb, s_f) * _gauss(ga, gb, s_g)

    s, t = [0, 1], [2, 3]
    cross = sum(k(i, j) for i in s for j in t) / 4
    biased = sum(k(i, j) for i in s for j in s) / 4 + sum(k(i, j) for i in t for j in t) / 4 - 2 * cross
    unbiased = k(0, 1) + k(2, 3) - 2 * cross
    linear = k(0, 1) + k(2, 3) - k(0, 3) - k(1, 2)
    tensors = [torch.tensor(v) for v in (f_s, f_t, g_s, g_t)]
    for estimator, expected in (("biased", biased), ("unbiased", unbiased), ("linear", linear)):
        got = jmmd(*tensors, num_kernels=1, estimator=estimator).item()
        assert got == pytest.approx(expected, rel=1e-6), estimator


def test_jmmd_sees_the_predictions_where_the_features_alone_match():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(16, 4, generator=g)
    logits = torch.randn(16, C, generator=g)
    same = jmmd(f, f, logits.softmax(1), logits.softmax(1), estimator="biased")
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # same features, other predictions: DAN's MMD is 0, the joint MMD is not
    other = (logits + 3 * torch.eye(C)[torch.arange(16) % C]).softmax(1)
    assert mk_mmd(f, f, estimator="biased").item() == pytest.approx(0.0, abs=1e-6)
    assert jmmd(f, f, logits.softmax(1), other, estimator="biased").item() > 1e-3


def test_jan_loss_goes_down_when_the_target_moves_towards_the_source():
    loss = build_loss("jan", feature_dim=4, num_classes=C, estimator="biased")
    g = torch.Generator().manual_seed(0)
    f_s, l_s = torch.randn(16, 4, generator=g), torch.randn(16, C, generator=g)
    f_t, l_t = (torch.randn(16, 4, generator=g) + 1.5).requires_grad_(True), torch.randn(16, C, generator=g)
    out = loss(f_s, f_t, l_s, l_t)
    assert out.item() > 0
    out.backward()
    assert (f_t.grad * (f_t.detach() - f_s.mean(0))).sum() > 0  # the gradient points away from the source
    after = loss(f_s, (f_t - 2.0 * f_t.grad).detach(), l_s, l_t)
    assert after.item() < out.item()


def test_jan_refuses_unknown_estimators():
    with pytest.raises(ValueError, match="estimator"):
        build_loss("jan", 4, C, estimator="quadratic")
