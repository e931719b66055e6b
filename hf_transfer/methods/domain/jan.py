"""JAN: Joint Adaptation Networks (Long et al., ICML 2017, https://arxiv.org/abs/1605.06636).

DAN aligns the marginal distributions of the features; JAN aligns the JOINT distribution of the features
``f`` and the class predictions ``g = softmax(logits)`` with the joint MMD (JMMD), whose kernel is the
product of one kernel per layer:

    k((f, g), (f', g')) = k_f(f, f') * k_g(g, g')
    JMMD^2 = E[k(s, s')] + E[k(t, t')] - 2 E[k(s, t)]

``k_f`` is DAN's multi-kernel (the mean of ``num_kernels`` Gaussians ``exp(-||a - b||^2 / s_u)`` with
``s_u = s_0 * kernel_mul^(u - K//2)`` around ``s_0``, the median or mean pairwise squared distance of the
pooled batch, detached: :mod:`~hf_transfer.methods.domain.mmd`); ``k_g`` is one Gaussian
``exp(-||g - g'||^2 / (2 sigma^2))`` with the fixed ``sigma = 0.92`` of the paper's code and TLlib.
Estimators: ``"unbiased"`` (within-domain means without the diagonal; may be slightly negative),
``"biased"`` (>= 0), ``"linear"`` (JAN-linear: the linear-time estimator over consecutive pairs).

Differences from TLlib, on purpose: the feature kernels are averaged (TLlib sums its five, which multiplies
the loss by about 5: the trade-off absorbs it) and no constant ``2 / (n - 1)`` is added to the unbiased
estimate (a constant has no gradient). Both the features and the predictions receive the gradient, as in the
paper (the predictions are not detached). Kernels are computed in float32 at least.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import TransferLoss, require_logits
from hf_transfer.methods.domain.mmd import base_bandwidth
from hf_transfer.methods.domain.registry import register_loss

ESTIMATORS = ("unbiased", "biased", "linear")


def _kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """``exp(-||x_i - y_i||^2 / s)`` averaged over the bandwidths ``s``: rows paired, or all pairs of 2-d inputs."""
    d2 = (x - y).pow(2).sum(-1)
    return torch.exp(-d2.unsqueeze(0) / bandwidths.view(-1, *([1] * d2.ndim))).mean(0)


def jmmd(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    g_s: torch.Tensor,
    g_t: torch.Tensor,
    num_kernels: int = 5,
    kernel_mul: float = 2.0,
    bandwidth: str = "median",
    prediction_sigma: float = 0.92,
    estimator: str = "unbiased",
) -> torch.Tensor:
    """The joint MMD between (features, predictions) of the source and of the target batch."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if f_s.shape[0] < 2 or f_t.shape[0] < 2:
        raise ValueError("JMMD needs at least 2 samples per domain")
    dt = torch.promote_types(f_s.dtype, torch.float32)
    f_s, f_t, g_s, g_t = (x.flatten(1).to(dt) for x in (f_s, f_t, g_s, g_t))
    s0 = base_bandwidth(torch.cat([f_s, f_t]), bandwidth)
    exps = torch.arange(num_kernels, device=f_s.device, dtype=dt) - num_kernels // 2
    bw_f = s0 * kernel_mul**exps
    bw_g = torch.tensor([2.0 * prediction_sigma**2], device=f_s.device, dtype=dt)

    def joint(a: int, b: int, pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (fa, ga), (fb, gb) = ((f_s, g_s), (f_t, g_t))[a], ((f_s, g_s), (f_t, g_t))[b]
        ia, ib = pairs
        return _kernel(fa[ia], fb[ib], bw_f) * _kernel(ga[ia], gb[ib], bw_g)

    if estimator == "linear":
        n = min(f_s.shape[0], f_t.shape[0]) // 2 * 2
        first, second = torch.arange(0, n, 2, device=f_s.device), torch.arange(1, n, 2, device=f_s.device)
        return (
            joint(0, 0, (first, second))
            + joint(1, 1, (first, second))
            - joint(0, 1, (first, second))
            - joint(0, 1, (second, first))
        ).mean()
    n, m = f_s.shape[0], f_t.shape[0]
    rows_n, rows_m = torch.arange(n, device=f_s.device), torch.arange(m, device=f_s.device)
    k_ss = joint(0, 0, (rows_n[:, None], rows_n[None, :]))
    k_tt = joint(1, 1, (rows_m[:, None], rows_m[None, :]))
    k_st = joint(0, 1, (rows_n[:, None], rows_m[None, :]))
    if estimator == "biased":
        return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()
    xx = (k_ss.sum() - k_ss.diagonal().sum()) / (n * (n - 1))
    yy = (k_tt.sum() - k_tt.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2 * k_st.mean()


@dataclass(frozen=True)
class JANOptions:
    num_kernels: int = field(default=5, metadata={"help": "Number K of Gaussian kernels on the features."})
    kernel_mul: float = field(default=2.0, metadata={"help": "Ratio between consecutive feature-kernel bandwidths."})
    bandwidth: str = field(
        default="median",
        metadata={"help": "Base feature bandwidth s_0: median | mean pairwise squared distance of the pooled batch."},
    )
    prediction_sigma: float = field(
        default=0.92, metadata={"help": "Width sigma of the Gaussian kernel on the softmax predictions."}
    )
    estimator: str = field(
        default="unbiased", metadata={"help": "JMMD estimator: unbiased | biased | linear (JAN-linear)."}
    )


@register_loss(
    "jan",
    title="JAN, joint MMD of features and predictions",
    paper="https://arxiv.org/abs/1605.06636",
    config=JANOptions,
    description="The joint distribution of features and class predictions is aligned with a joint "
    "maximum mean discrepancy.",
)
class JANLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o.bandwidth not in ("median", "mean"):
            raise ValueError(f"bandwidth must be 'median' or 'mean', got {o.bandwidth!r}")
        if o.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {o.estimator!r}")
        if o.num_kernels < 1 or o.kernel_mul <= 0 or o.prediction_sigma <= 0:
            raise ValueError("num_kernels must be >= 1, kernel_mul and prediction_sigma > 0")

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The JMMD of (features, softmax predictions) between the two batches."""
        g_s = F.softmax(require_logits("jan", logits_s).float(), dim=1)
        g_t = F.softmax(require_logits("jan", logits_t).float(), dim=1)
        o = self.options
        return jmmd(f_s, f_t, g_s, g_t, o.num_kernels, o.kernel_mul, o.bandwidth, o.prediction_sigma, o.estimator)

    def extra_repr(self) -> str:
        o = self.options
        return (
            f"num_kernels={o.num_kernels}, kernel_mul={o.kernel_mul}, bandwidth={o.bandwidth!r}, "
            f"prediction_sigma={o.prediction_sigma}, estimator={o.estimator!r}"
        )
