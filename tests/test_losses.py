"""Domain-adaptation losses: each behaves as its paper says on a tiny case."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.domain import (
    LOSSES,
    AdversarialLoss,
    GradientReverseFunction,
    TransferLoss,
    adapt_batchnorm,
    build_loss,
    grad_reverse,
    grl_coefficient,
    register_loss,
)
from hf_transfer.methods.domain.cdan import CDANLoss
from hf_transfer.methods.domain.coral import coral
from hf_transfer.methods.domain.mmd import mk_mmd
from hf_transfer.methods.domain.source_free import SourceFreeLoss
from hf_transfer.methods.domain.step import SteppedLoss
from hf_transfer.methods.registry import all_methods

D, C = 8, 4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(n=16, shift=0.0, seed=0, d=D, c=C):
    g = gen(seed)
    f_s = torch.randn(n, d, generator=g)
    f_t = torch.randn(n, d, generator=g) + shift
    return f_s, f_t, torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)


# --------------------------------------------------------------------------- the method table
@dataclass(frozen=True)
class Row:
    grad: str  # what receives the loss's gradient: "features", "logits" (the target's) or "none"
    logits: bool = False  # needs classifier logits
    adversarial: bool = False  # trained through the gradient reversal layer (AdversarialLoss)
    source_weight: bool = False  # takes per-sample source weights (PADA)
    zero_grad_ok: bool = False  # the gradient may vanish on the test batch (thresholded methods)
    reference: Callable | None = None  # (loss in eval mode, f_s, f_t, l_s, l_t) -> the paper's value
    stepped: bool = False  # owns its training step (SteppedLoss): several passes per optimizer step
    source_free: bool = False  # no source: a term over target rows with their indices (SourceFreeLoss)


def _mdd_reference(m, f_s, f_t, l_s, l_t):
    p_t = F.softmax(m.adversarial_head(f_t), 1).gather(1, l_t.argmax(1)[:, None])
    return m.margin * F.cross_entropy(m.adversarial_head(f_s), l_s.argmax(1)) - torch.log(1 - p_t).mean()


# one row per registered domain method: adding a method adds its row here
METHODS = {
    "source_only": Row("none"),
    "dann": Row("features", adversarial=True, source_weight=True),
    "cdan": Row("features", logits=True, adversarial=True, source_weight=True),
    "dan": Row("features"),
    "coral": Row("features"),
    "mcc": Row("logits", logits=True),
    "entropy": Row("logits", logits=True),
    "im": Row("logits", logits=True),
    "pseudo_label": Row("logits", logits=True, zero_grad_ok=True),
    "cbst": Row("logits", logits=True),
    "fixmatch": Row("logits", logits=True, zero_grad_ok=True),
    "mdd": Row("features", logits=True, adversarial=True, source_weight=True, reference=_mdd_reference),
    "mcd": Row("logits", logits=True, stepped=True),
    "sdat": Row("features", logits=True, stepped=True),
    "bnm": Row("logits", logits=True),
    "shot": Row("logits", logits=True, source_free=True),
    "nrc": Row("logits", logits=True, source_free=True),
    "aad": Row("logits", logits=True, source_free=True),
    "bsp": Row("features", source_weight=True),
    "afn": Row("features"),
    "jan": Row("features", logits=True),
}


def test_the_table_has_one_row_per_registered_method():
    assert set(METHODS) == set(LOSSES) == set(all_methods("domain"))
    for name, cls in LOSSES.items():
        assert issubclass(cls, TransferLoss)
        assert cls.__doc__, name
        if name != "source_only":
            assert cls.paper.startswith("http") and cls.paper in cls.__doc__, name
        assert cls.uses_source_weight == METHODS[name].source_weight
        assert issubclass(cls, AdversarialLoss) == METHODS[name].adversarial
        assert issubclass(cls, SteppedLoss) == METHODS[name].stepped
        assert (
            issubclass(cls, SourceFreeLoss) == METHODS[name].source_free == (not all_methods()[name].needs.source_data)
        )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_loss_is_a_finite_scalar_with_gradients(name):
    torch.manual_seed(0)
    loss = build_loss(name, feature_dim=D, num_classes=C)
    loss.set_progress(0.5)
    f_s, f_t, l_s, l_t = batch(shift=1.0)
    f_t.requires_grad_(True)
    l_t = (3 * l_t).requires_grad_(True)  # confident enough for pseudo_label to pass sometimes
    if METHODS[name].source_free:  # no source rows; the per-row state filled by a pass over these target rows
        loss.allocate(len(f_t))
        loss.refresh(f_t.detach(), l_t.detach(), epoch=0)
        out = loss(f_s[:0], f_t, l_s[:0], l_t, rows=torch.arange(len(f_t)))
    else:
        out = loss(f_s, f_t, l_s, l_t)
    assert out.ndim == 0 and torch.isfinite(out)
    assert all(isinstance(v, float) for v in loss.last_metrics.values())
    if METHODS[name].grad == "none":
        assert out.item() == 0.0
        return
    out.backward()
    # adversarial methods condition on detached predictions: their gradient goes to the features only
    grad = f_t.grad if METHODS[name].grad == "features" else l_t.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert METHODS[name].zero_grad_ok or grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(n for n, row in METHODS.items() if row.logits))
def test_logit_methods_refuse_missing_logits(name):
    loss = build_loss(name, D, C)
    f_s, f_t, _, _ = batch()
    with pytest.raises(ValueError, match="logits"):
        loss(f_s, f_t)


@pytest.mark.parametrize("name", sorted(n for n, row in METHODS.items() if row.reference))
def test_value_is_the_papers_formula(name):
    torch.manual_seed(0)
    loss = build_loss(name, D, C).eval()
    f_s, f_t, l_s, l_t = batch()
    with torch.no_grad():
        assert loss(f_s, f_t, l_s, l_t).item() == pytest.approx(
            METHODS[name].reference(loss, f_s, f_t, l_s, l_t).item(), rel=1e-5
        )


@pytest.mark.parametrize("name", sorted(n for n, row in METHODS.items() if row.adversarial))
def test_features_get_the_reversed_gradient(name, monkeypatch):
    """d(loss)/d(features) = -coeff * d(loss without reversal)/d(features); 0 while the schedule holds."""
    torch.manual_seed(0)
    loss = build_loss(name, D, C, hold=0.0).eval()  # eval: dropout off, BN statistics fixed
    loss.set_progress(0.3)
    coeff = loss.coefficient
    assert 0 < coeff < loss.hi
    f_s, f_t, l_s, l_t = batch()
    f1 = f_s.clone().requires_grad_(True)
    loss(f1, f_t, l_s, l_t).backward()
    monkeypatch.setattr(loss, "reverse", lambda x: (x, coeff))
    f2 = f_s.clone().requires_grad_(True)
    loss(f2, f_t, l_s, l_t).backward()
    assert f1.grad.abs().sum() > 0
    torch.testing.assert_close(f1.grad, -coeff * f2.grad, atol=1e-6, rtol=1e-5)
    held = build_loss(name, D, C, hold=1.0)
    f3 = f_s.clone().requires_grad_(True)
    held(f3, f_t, l_s, l_t).backward()
    assert held.coefficient == 0.0 and f3.grad.abs().max() == 0


@pytest.mark.parametrize("name", sorted(n for n, row in METHODS.items() if row.source_weight))
def test_source_weight_weights_only_the_source_side(name):
    torch.manual_seed(0)
    loss = build_loss(name, D, C, hold=0.0).eval()  # eval: BN must not mix rows, no dropout
    f_s, f_t, l_s, l_t = torch.randn(6, D), torch.randn(6, D), torch.randn(6, C), torch.randn(6, C)
    unweighted = loss(f_s, f_t, l_s, l_t)
    assert torch.allclose(loss(f_s, f_t, l_s, l_t, source_weight=torch.ones(6)), unweighted)
    # zero weight on the first three source rows: their features no longer matter
    w = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    moved = f_s.clone()
    moved[:3] += 5.0
    assert torch.allclose(loss(moved, f_t, l_s, l_t, source_weight=w), loss(f_s, f_t, l_s, l_t, source_weight=w))
    assert not torch.allclose(loss(moved, f_t, l_s, l_t), unweighted)


def test_build_loss_unknown_name_lists_the_names():
    with pytest.raises(TransferConfigError, match="nosuchmethod") as e:
        build_loss("nosuchmethod", D, C)
    assert "dann" in str(e.value) and "coral" in str(e.value)


def test_build_loss_unknown_or_mistyped_option_is_named():
    with pytest.raises(TransferConfigError, match="temprature") as e:
        build_loss("mcc", D, C, temprature=2.0)
    assert "temperature" in str(e.value)  # the accepted ones are listed
    with pytest.raises(TransferConfigError, match="hold='0.1' must be of type float"):
        build_loss("dann", D, C, hold="0.1")
    assert build_loss("mcc", D, C, temperature=1.0).temperature == 1.0
    assert build_loss("dann", D, C, alpha=5.0, hold=0, hi=0.5).hi == 0.5  # an int is a float


def test_register_loss_refuses_duplicates():
    with pytest.raises(ValueError, match="'dann'"):
        register_loss("dann", title="x", description="x")(type("Other", (TransferLoss,), {}))
    with pytest.raises(TypeError):
        register_loss("not_a_loss", title="x", description="x")(object)
    assert "not_a_loss" not in LOSSES


def test_set_progress_validates():
    loss = build_loss("dann", D, C)
    with pytest.raises(ValueError):
        loss.set_progress(1.5)
    with pytest.raises(ValueError):
        loss.set_progress(-0.1)


# --------------------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize("coeff", [1.0, 0.3, 0.0])
def test_grl_negates_and_scales_the_gradient(coeff):
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = GradientReverseFunction.apply(x, coeff)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -coeff * w)
    x.grad = None
    (grad_reverse(x, coeff) * w).sum().backward()
    assert torch.allclose(x.grad, -coeff * w)


@pytest.mark.parametrize("hold", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("hi", [1.0, 0.5])
def test_grl_schedule(hold, hi):
    ps = [i / 100 for i in range(101)]
    vals = [grl_coefficient(p, alpha=10.0, hi=hi, hold=hold) for p in ps]
    assert all(v == 0.0 for p, v in zip(ps, vals, strict=True) if p <= hold)
    assert all(b >= a for a, b in itertools.pairwise(vals))  # monotone
    assert vals[-1] == pytest.approx(hi, rel=1e-3)  # reaches ~hi at p = 1
    # after the hold it is the DANN ramp over the rescaled progress
    p = hold + 0.5 * (1 - hold)
    assert grl_coefficient(p, hi=hi, hold=hold) == pytest.approx(hi * (2 / (1 + math.exp(-5)) - 1))


def test_schedule_is_a_pure_function_of_progress():
    """No hidden step counter: many forwards do not move the coefficient; a fresh module restored
    from a state_dict with the same progress gives the same loss (what resume relies on)."""
    torch.manual_seed(0)
    a = build_loss("dann", D, C, hold=0.1)
    a.set_progress(0.4)
    f_s, f_t, _, _ = batch(shift=1.0)
    c0 = a.coefficient
    for _ in range(5):
        a(f_s, f_t)
    assert a.coefficient == c0 == grl_coefficient(0.4, hi=a.hi, hold=0.1)
    a.eval()
    b = build_loss("dann", D, C, hold=0.1)
    b.load_state_dict(a.state_dict())
    b.eval()
    b.set_progress(0.4)
    assert b.coefficient == c0
    assert torch.equal(a(f_s, f_t), b(f_s, f_t))
    b.set_progress(0.9)
    assert b.coefficient > c0


# --------------------------------------------------------------------------- adversarial: DANN, CDAN
ADVERSARIAL = [
    ("dann", {}),
    ("cdan", {}),
    ("cdan", {"entropy_conditioning": True}),
    ("cdan", {"randomized": True, "randomized_dim": 32}),
]


@pytest.mark.parametrize("name,kw", ADVERSARIAL)
def test_adversarial_loss_is_about_log2_at_init(name, kw):
    vals = []
    for seed in range(5):
        torch.manual_seed(seed)
        loss = build_loss(name, D, C, hidden_size=64, **kw)
        vals.append(loss(*batch(seed=seed)).item())
    assert sum(vals) / len(vals) == pytest.approx(math.log(2), abs=0.12)


@pytest.mark.parametrize("name,kw", ADVERSARIAL)
def test_discriminator_learns_to_separate_shifted_domains_when_grl_is_off(name, kw):
    torch.manual_seed(0)
    loss = build_loss(name, D, C, hidden_size=64, hold=1.0, **kw)  # coefficient 0 all along
    loss.set_progress(0.5)
    f_s, f_t, l_s, l_t = batch(n=32, shift=2.0)
    f_s.requires_grad_(True)
    first = None
    for _ in range(15):  # plain gradient descent (torch.optim's first step imports torch._dynamo: slow)
        loss.zero_grad()
        out = loss(f_s, f_t, l_s, l_t)
        out.backward()
        with torch.no_grad():
            for p in loss.parameters():
                p -= 0.2 * p.grad
        first = out.item() if first is None else first
    assert loss.last_metrics["grl_coeff"] == 0.0
    assert out.item() < 0.5 * first
    assert loss.last_metrics["domain_acc"] > 0.9
    assert f_s.grad.abs().max() == 0  # GRL with coefficient 0 blocks the features' gradient


def test_cdan_entropy_conditioning_weights_confident_samples():
    torch.manual_seed(0)
    plain = build_loss("cdan", D, C, hidden_size=32)
    cond = build_loss("cdan", D, C, hidden_size=32, entropy_conditioning=True)
    cond.load_state_dict(plain.state_dict())
    f_s, f_t, l_s, l_t = batch()
    l_s[:8] *= 20  # half of each domain very confident
    l_t[:8] *= 20
    with torch.no_grad():
        g = F.softmax(torch.cat([l_s, l_t]), 1)
        d = plain.discriminator(plain.multilinear_map(torch.cat([f_s, f_t]), g))[:, 0]
        y = torch.cat([torch.ones(16), torch.zeros(16)])
        bce = F.binary_cross_entropy_with_logits(d, y, reduction="none")
        h = -(g * torch.log(g + 1e-8)).sum(1)
        w = 1 + torch.exp(-h)
        ref = 0.5 * ((w[:16] * bce[:16]).sum() / w[:16].sum() + (w[16:] * bce[16:]).sum() / w[16:].sum())
        assert torch.allclose(cond(f_s, f_t, l_s, l_t), ref, atol=1e-6)
        assert torch.allclose(plain(f_s, f_t, l_s, l_t), 0.5 * (bce[:16].mean() + bce[16:].mean()), atol=1e-6)
    assert w[:8].min() > w[8:16].max()  # confident samples weigh more


def test_cdan_map_is_outer_product_or_randomized():
    small = build_loss("cdan", 8, 4)
    assert not small.randomized and small.map_dim == 32
    f, g = torch.randn(3, 8), F.softmax(torch.randn(3, 4), 1)
    assert torch.allclose(small.multilinear_map(f, g).view(3, 4, 8), g[:, :, None] * f[:, None, :])
    big = build_loss("cdan", 256, 31, hidden_size=16)  # 256 * 31 > 4096: randomized by default
    assert big.randomized and big.map_dim == 1024
    again = CDANLoss(256, 31, hidden_size=16)
    assert torch.equal(big.Rf, again.Rf) and "Rf" in big.state_dict()  # same on every process


# --------------------------------------------------------------------------- statistics: DAN, CORAL
@pytest.mark.parametrize("estimator", ["unbiased", "biased", "linear"])
def test_mmd_zero_for_same_distribution_and_grows_with_shift(estimator):
    vals = []
    for shift in [0.0, 0.5, 1.0, 2.0]:
        f_s, f_t, _, _ = batch(n=128, shift=shift, seed=1)
        vals.append(mk_mmd(f_s, f_t, estimator=estimator).item())
    assert abs(vals[0]) < (0.02 if estimator != "linear" else 0.06)
    assert all(b > a for a, b in itertools.pairwise(vals)), vals
    assert vals[-1] > 10 * max(abs(vals[0]), 1e-3)
    same, _, _, _ = batch(n=64)
    assert mk_mmd(same, same.clone(), estimator="biased").item() == pytest.approx(0.0, abs=1e-6)


def test_coral_zero_for_equal_covariance_positive_otherwise_and_paper_scale():
    f_s, f_t, _, _ = batch(n=64)
    assert coral(f_s, f_s + 5.0).item() == pytest.approx(0.0, abs=1e-6)  # mean shift: invariant
    assert coral(f_s, f_s[torch.randperm(64)]).item() == pytest.approx(0.0, abs=1e-6)
    scaled = coral(f_s, 3 * f_t).item()
    assert scaled > coral(f_s, f_t).item() > 0
    # exact formula ||C_s - C_t||_F^2 / (4 d^2) with unbiased covariances
    import numpy as np

    cs, ct = np.cov(f_s.numpy(), rowvar=False), np.cov(3 * f_t.numpy(), rowvar=False)
    assert scaled == pytest.approx(((cs - ct) ** 2).sum() / (4 * D * D), rel=1e-4)
    assert build_loss("coral", D, C)(f_s, 3 * f_t).item() == pytest.approx(scaled)


# --------------------------------------------------------------------------- target-prediction losses
def one_hot_logits(n, c, scale=10.0, collapse=False):
    y = torch.zeros(n, dtype=torch.long) if collapse else torch.arange(n) % c
    return scale * F.one_hot(y, c).float()


def test_mcc_lower_for_confident_diagonal_than_confused():
    mcc = build_loss("mcc", D, C)
    f_s, f_t, _, _ = batch()
    confident = mcc(f_s, f_t, None, one_hot_logits(16, C, scale=20.0)).item()
    confused = mcc(f_s, f_t, None, torch.randn(16, C, generator=gen(3)) * 0.5).item()
    uniform = mcc(f_s, f_t, None, torch.zeros(16, C)).item()
    assert confident < 0.01 < 0.1 < confused < uniform
    assert uniform == pytest.approx((C - 1) / C)  # upper bound: everything confused


def test_information_maximization_is_best_for_confident_balanced():
    im = build_loss("im", D, C)
    ent = build_loss("entropy", D, C)
    f = torch.zeros(16, D)
    balanced, collapsed = one_hot_logits(16, C), one_hot_logits(16, C, collapse=True)
    uniform, noisy = torch.zeros(16, C), torch.randn(16, C, generator=gen(2))
    scores = {
        k: im(f, f, None, v).item()
        for k, v in dict(balanced=balanced, collapsed=collapsed, uniform=uniform, noisy=noisy).items()
    }
    assert scores["balanced"] == pytest.approx(-math.log(C), abs=1e-2)  # the minimum
    assert scores["balanced"] < min(scores["collapsed"], scores["uniform"], scores["noisy"])
    # entropy minimisation alone cannot tell balanced from collapsed, IM can
    assert ent(f, f, None, balanced).item() == pytest.approx(ent(f, f, None, collapsed).item(), abs=1e-3)
    assert ent(f, f, None, balanced).item() < ent(f, f, None, uniform).item() == pytest.approx(math.log(C))


def test_pseudo_label_zero_when_nothing_passes_threshold():
    pl = build_loss("pseudo_label", D, C, threshold=0.95)
    f = torch.zeros(8, D)
    logits = torch.randn(8, C, generator=gen(0)).requires_grad_(True)  # max prob well below 0.95
    out = pl(f, f, None, logits)
    assert out.item() == 0.0 and pl.last_metrics["mask_rate"] == 0.0
    out.backward()
    assert logits.grad.abs().max() == 0


def test_pseudo_label_uses_confident_samples_only():
    pl = build_loss("pseudo_label", D, C, threshold=0.95)
    f = torch.zeros(8, D)
    logits = torch.randn(8, C, generator=gen(0))
    logits[:3] = one_hot_logits(3, C, scale=8.0) + 0.1 * logits[:3]
    out = pl(f, f, None, logits)
    assert pl.last_metrics["mask_rate"] == pytest.approx(3 / 8)
    ref = F.cross_entropy(logits[:3], logits[:3].argmax(1), reduction="sum") / 8
    assert out.item() == pytest.approx(ref.item(), rel=1e-5) and out.item() > 0


def test_cbst_keeps_the_top_fraction_of_each_predicted_class():
    from hf_transfer.methods.domain.self_training import class_balanced_mask

    # class 0: 6 samples (a dominant class), class 1: 2 samples; fraction 0.5 -> top 3 of class 0, top 1 of class 1
    conf = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.70, 0.60])
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    perm = torch.randperm(8, generator=gen(1))
    mask = class_balanced_mask(conf[perm], labels[perm], 0.5)
    assert mask.tolist() == torch.tensor([1, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)[perm].tolist()
    assert not class_balanced_mask(conf, labels, 0.0).any() and class_balanced_mask(conf, labels, 1.0).all()
    # a global 0.95 threshold would keep 5 samples, all of class 0; CBST keeps the rare class's best too
    cbst = build_loss("cbst", D, C, fraction_start=0.2, fraction=0.5)
    logits = torch.log(
        torch.stack(
            [
                torch.tensor([c, 1 - c, 0, 0]) if y == 0 else torch.tensor([1 - c, c, 0, 0])
                for c, y in zip(conf.tolist(), labels.tolist(), strict=True)
            ]
        ).clamp_min(1e-6)
    )
    logits.requires_grad_(True)
    cbst.set_progress(1.0)
    out = cbst(None, None, None, logits)
    keep = class_balanced_mask(conf, labels, 0.5)
    ref = F.cross_entropy(logits[keep], labels[keep], reduction="sum") / 8
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    assert cbst.last_metrics == {"mask_rate": 0.5, "fraction": 0.5}
    out.backward()
    assert logits.grad[~keep].abs().max() == 0 and logits.grad[keep].abs().sum() > 0
    cbst.set_progress(0.0)  # the fraction grows with progress: 0.2 -> ceil(1.2)=2 of class 0, 1 of class 1
    cbst(None, None, None, logits)
    assert cbst.last_metrics["fraction"] == pytest.approx(0.2) and cbst.last_metrics["mask_rate"] == 3 / 8


def test_fixmatch_labels_from_weak_view_loss_and_gradient_on_strong_view_only():
    fm = build_loss("fixmatch", D, C, threshold=0.95)
    assert fm.target_views == 2
    weak = torch.randn(6, C, generator=gen(0))
    weak[:2] = one_hot_logits(2, C, scale=8.0)  # only these two are confident
    strong = torch.randn(6, C, generator=gen(1))
    weak.requires_grad_(True)
    strong.requires_grad_(True)
    out = fm(None, None, None, torch.cat([weak, strong]))
    ref = F.cross_entropy(strong[:2], weak[:2].argmax(1), reduction="sum") / 6
    assert out.item() == pytest.approx(ref.item(), rel=1e-5) and fm.last_metrics["mask_rate"] == pytest.approx(2 / 6)
    out.backward()
    assert weak.grad is None or weak.grad.abs().max() == 0  # labels are detached
    assert strong.grad[2:].abs().max() == 0 and strong.grad[:2].abs().sum() > 0
    # nothing confident -> exactly 0
    assert fm(None, None, None, torch.zeros(8, C)).item() == 0.0 and fm.last_metrics["mask_rate"] == 0.0
    with pytest.raises(ValueError, match="even"):
        fm(None, None, None, torch.zeros(5, C))


def test_fixmatch_strong_view_changes_the_images_keeps_shape_and_dtype():
    fm = build_loss("fixmatch", D, C)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    y = fm.second_view(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert not torch.allclose(x, y)
    assert (y - x).flatten(1).abs().sum(1).min() > 0  # every sample is changed


# --------------------------------------------------------------------------- AdaBN
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6))

    def forward(self, pixel_values):
        return self.head(self.drop(torch.relu(self.bn(self.conv(pixel_values)))))


def test_adabn_changes_only_bn_running_stats_and_moves_them_to_target():
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    for _ in range(3):  # source statistics: mean ~0
        model(torch.randn(16, 3, 4, 4))
    model.head.eval()  # a submodule deliberately in eval mode: its flag must be restored
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    momentum = model.bn.momentum
    conv_out_src = model.bn.running_mean.clone()
    target = [
        {"pixel_values": torch.randn(16, 3, 4, 4, generator=gen(i)) + 5.0, "labels": torch.zeros(16)} for i in range(4)
    ]
    with torch.no_grad():  # the target mean of the BN input, in the conv's output space
        true_mean = torch.cat([model.conv(b["pixel_values"]) for b in target]).mean((0, 2, 3))

    adapt_batchnorm(model, target)

    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k  # bit-identical
        assert v.grad is None
    changed = {k for k, v in model.named_buffers() if not torch.equal(v, buffers[k])}
    assert changed == {
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "head.2.running_mean",
        "head.2.running_var",
        "head.2.num_batches_tracked",
    }
    assert int(model.bn.num_batches_tracked) == 4
    assert torch.allclose(model.bn.running_mean, true_mean, atol=1e-4)  # cumulative average
    assert (model.bn.running_mean - true_mean).abs().max() < (conv_out_src - true_mean).abs().max()
    # dropout stays off during the passes: the BN after it saw the deterministic activations
    with torch.no_grad():
        means = []
        for b in target:
            h = model.conv(b["pixel_values"])
            h = torch.relu(F.batch_norm(h, None, None, model.bn.weight, model.bn.bias, training=True))
            means.append(model.head[1](model.head[0](h)).mean(0))
    assert torch.allclose(model.head[2].running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert model.training and model.conv.training and model.drop.training
    assert not model.head.training and not model.head[2].training
    assert model.bn.momentum == momentum


def test_adabn_refuses_empty_target_and_keeps_stats():
    model = TinyNet()
    before = model.bn.running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        adapt_batchnorm(model, [])
    assert torch.equal(model.bn.running_mean, before) and model.bn.momentum == 0.1


# --- options every method shares: trade-off schedule, bottleneck, PADA source weights ---------------


def test_trade_off_schedules_are_pure_functions_of_progress():
    from hf_transfer.methods.domain import trade_off_weight

    assert trade_off_weight(0.0, 2.0) == trade_off_weight(0.7, 2.0) == 2.0
    # DANN ramp: 0 at the start, trade_off * (2 / (1 + e^-10) - 1) at the end, monotone in between
    assert trade_off_weight(0.0, 2.0, "dann") == 0.0
    assert trade_off_weight(1.0, 2.0, "dann") == pytest.approx(2.0 * (2 / (1 + math.exp(-10)) - 1))
    ramp = [trade_off_weight(p / 10, 1.0, "dann") for p in range(11)]
    assert ramp == sorted(ramp) and ramp[5] == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    # linear warm-up over the first 20%: half way at p=0.1, full from p=0.2 on
    assert trade_off_weight(0.1, 3.0, "linear", warmup=0.2) == pytest.approx(1.5)
    assert trade_off_weight(0.2, 3.0, "linear", warmup=0.2) == trade_off_weight(0.9, 3.0, "linear", warmup=0.2) == 3.0
    assert trade_off_weight(0.05, 1.0, "linear", warmup=0.1) == trade_off_weight(0.05, 1.0, "linear", warmup=0.1)
    with pytest.raises(ValueError, match="cosine"):
        trade_off_weight(0.5, 1.0, "cosine")


def test_bottleneck_folds_into_one_exact_linear():
    from hf_transfer.models.bottleneck import BottleneckHead, fold_bottleneck, fold_into

    torch.manual_seed(0)
    head = BottleneckHead(12, 5, 3)
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
        head.bn.weight.uniform_(0.5, 2.0)
        head.bn.bias.uniform_(-1.0, 1.0)
    head.train()
    for _ in range(5):
        head(torch.randn(16, 12) * 3 + 1)
    head.eval()
    assert not torch.allclose(head.bn.running_mean, torch.zeros(5))
    x = torch.randn(32, 12) * 3
    weight, bias = fold_bottleneck(head)
    with torch.no_grad():
        expected = head(x)[1]
    torch.testing.assert_close((x.double() @ weight.T + bias).float(), expected, atol=1e-5, rtol=1e-5)
    linear = nn.Linear(12, 3)
    fold_into(head, linear)
    with torch.no_grad():
        torch.testing.assert_close(linear(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot fold"):
        fold_into(head, nn.Linear(12, 4))


def test_pada_class_weights_are_mean_prediction_over_max():
    from hf_transfer.methods.domain.partial import ClassWeights

    cw = ClassWeights(3)
    assert torch.equal(cw.weights, torch.ones(3)) and int(cw.updates) == 0  # uniform before any estimate
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])
    cw.update(probs)
    torch.testing.assert_close(cw.weights, torch.tensor([0.7, 0.2, 0.1]) / 0.7)
    assert int(cw.updates) == 1 and set(cw.state_dict()) == {"weights", "updates"}  # checkpointed


# --------------------------------------------------------------------------- source-free methods (hand computations)
def test_shot_pseudo_labels_are_the_nearest_weighted_centroid_twice():
    from hf_transfer.methods.domain.shot import shot_pseudo_labels

    features = torch.tensor([[2.0, 0.1], [1.5, -0.2], [0.2, 1.8], [0.1, 2.2], [1.0, 1.1]])
    logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0]])  # row 3 and 4 lean wrong
    f = torch.cat([features, torch.ones(5, 1)], 1)
    f = f / f.norm(dim=1, keepdim=True)
    weights = logits.softmax(1)
    labels = None
    for _ in range(2):  # SHOT's obtain_label: soft centroids, nearest (cosine); then hard centroids, nearest
        centroids = [(weights[:, k : k + 1] * f).sum(0) / weights[:, k].sum() for k in range(2)]
        labels = torch.tensor([min(range(2), key=lambda k: 1 - F.cosine_similarity(row, centroids[k], 0)) for row in f])
        weights = F.one_hot(labels, 2).float()
    assert labels.tolist() == [0, 0, 1, 1, 0]  # row 3 is moved to the cluster it sits in
    assert shot_pseudo_labels(features, logits).tolist() == labels.tolist()


def test_shot_loss_is_im_plus_weighted_pseudo_label_ce_and_labels_refresh_once_per_epoch():
    loss = build_loss("shot", D, C, pseudo_label_weight=0.3)
    f_t, logits = torch.randn(6, D, generator=gen(1)), torch.randn(6, C, generator=gen(2))
    loss.allocate(6)
    assert loss.needs_refresh(0)
    loss.refresh(f_t, logits, epoch=0)
    assert not loss.needs_refresh(0) and loss.needs_refresh(1)
    labels = loss.get_buffer("pseudo_labels")
    rows = torch.tensor([4, 1, 2])
    p = logits[rows].softmax(1)
    ent = -(p * torch.log(p + 1e-8)).sum(1).mean()
    mean = p.mean(0)
    div = -(mean * torch.log(mean + 1e-8)).sum()
    ce = -torch.log(p[torch.arange(3), labels[rows]]).mean()
    out = loss(f_t[:0], f_t[rows], logits[:0], logits[rows], rows=rows)
    assert out.item() == pytest.approx((ent - div + 0.3 * ce).item(), rel=1e-5)


def test_nrc_loss_is_the_affinity_weighted_neighbourhood_agreement_by_hand():
    loss = build_loss("nrc", 2, 2, k=1, k_expanded=1, expanded_weight=0.1)
    bank_f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    bank_logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    loss.allocate(4)
    loss.refresh(bank_f, bank_logits, epoch=0)
    rows = torch.tensor([0, 2])
    f_t, logits = torch.tensor([[1.0, 0.05], [0.05, 1.0]]), torch.tensor([[0.5, 0.0], [0.0, 0.3]])
    out = loss(f_t[:0], f_t, logits[:0], logits, rows=rows)
    # by hand: the batch rows are written into the bank first, then each row's nearest other row, and that
    # row's nearest other row (row 0 <-> 1 and 2 <-> 3 are mutual: affinity 1)
    bank = F.normalize(bank_f, dim=1)
    bank[rows] = F.normalize(f_t, dim=1)
    scores = bank_logits.softmax(1)
    p = logits.softmax(1)
    scores[rows] = p
    total = 0.0
    for i, row in enumerate(rows.tolist()):
        sim = bank[row] @ bank.T
        sim[row] = -2
        j = int(sim.argmax())
        sim_j = bank[j] @ bank.T
        sim_j[j] = -2
        m = int(sim_j.argmax())
        affinity = 1.0 if m == row else 0.1
        total += -(affinity * scores[j] @ p[i]) - 0.1 * (scores[m] @ p[i])
    mean = p.mean(0)
    expected = total / 2 + (mean * torch.log(mean + 1e-5)).sum()
    assert out.item() == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose(loss.get_buffer("score_bank")[rows], p)  # the batch's rows are written into the bank


def test_aad_attracts_to_bank_neighbours_and_disperses_the_batch_with_a_decaying_weight():
    loss = build_loss("aad", 2, 2, k=2, alpha=1.0, beta=5.0)
    bank_f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0]])
    bank_logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 2.0]])
    loss.allocate(4)
    loss.refresh(bank_f, bank_logits, epoch=0)
    loss.set_progress(0.1)
    rows = torch.tensor([0, 3])
    f_t, logits = bank_f[rows], torch.tensor([[1.0, 0.0], [0.0, 0.4]])
    out = loss(f_t[:0], f_t, logits[:0], logits, rows=rows)
    p = logits.softmax(1)
    scores = bank_logits.softmax(1)
    scores[rows] = p
    bank = F.normalize(bank_f, dim=1)
    attract = 0.0
    for i, row in enumerate(rows.tolist()):
        sim = bank[row] @ bank.T
        sim[row] = -2
        attract += -sum(scores[j] @ p[i] for j in sim.topk(2).indices.tolist())
    disperse = 2 * (p[0] @ p[1]) / 2  # each row with the other one, averaged over the 2 rows
    weight = (1 + 10 * 0.1) ** -5.0
    assert loss.dispersion_weight == pytest.approx(weight)
    assert out.item() == pytest.approx(float(attract / 2 + weight * disperse), rel=1e-5)
