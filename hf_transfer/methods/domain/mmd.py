"""DAN: multi-kernel Maximum Mean Discrepancy (Long et al., ICML 2015, https://arxiv.org/abs/1502.02791).

    MMD^2(P, Q) = E[k(x, x')] + E[k(y, y')] - 2 E[k(x, y)],    k = 1/K * sum_u exp(-||a - b||^2 / s_u)

with ``K = num_kernels`` Gaussian kernels whose bandwidths ``s_u = s_0 * kernel_mul^(u - K//2)`` are
spread around ``s_0``, the median (or mean) pairwise squared distance of the pooled batch (detached).
DAN learns the kernel weights ``beta``; like TLlib we use equal weights.

Estimators: ``"unbiased"`` (U-statistic: within-domain means exclude the diagonal; can be slightly
negative; O(n^2)), ``"biased"`` (V-statistic, >= 0), or ``"linear"`` (DAN's linear-time estimator
over consecutive pairs; needs equal source and target batch sizes, uses the first min(n_s, n_t)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hf_transfer.methods.domain.base import TransferLoss
from hf_transfer.methods.domain.registry import register_loss


def gaussian_kernel_matrix(x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """The ``[N, M]`` Gaussian kernel between the rows of ``x`` and ``y``, averaged over ``bandwidths``."""
    d2 = torch.cdist(x, y).pow(2)
    return torch.exp(-d2.unsqueeze(0) / bandwidths.view(-1, 1, 1)).mean(0)


def base_bandwidth(z: torch.Tensor, how: str = "median", floor: float = 1e-8) -> torch.Tensor:
    """Median or mean of the off-diagonal pairwise squared distances of ``z`` (detached).

    ``"median"`` is torch's (the lower of the two middle values: what DAN trains with);
    ``"midpoint_median"`` averages the two middle values (numpy's median: the domain-gap report's).
    ``floor`` keeps a degenerate (all-equal) sample finite: 1e-8 in training; the domain-gap report
    uses 1e-12, since features at initialisation can have pairwise distances far below 1e-8.
    """
    with torch.no_grad():
        d2 = torch.cdist(z, z).pow(2)
        n = z.shape[0]
        off = d2[~torch.eye(n, dtype=torch.bool, device=z.device)]
        if how == "midpoint_median":
            k = off.numel()
            s = (off.kthvalue((k + 1) // 2).values + off.kthvalue(k // 2 + 1).values) / 2
        else:
            s = off.median() if how == "median" else off.mean()
        return s.clamp_min(floor)


def mk_mmd(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    num_kernels: int = 5,
    kernel_mul: float = 2.0,
    bandwidth: str = "median",
    estimator: str = "unbiased",
    bandwidth_floor: float = 1e-8,
) -> torch.Tensor:
    """The multi-kernel MMD between the source and target features (``estimator``: unbiased, biased or linear)."""
    if f_s.shape[0] < 2 or f_t.shape[0] < 2:
        raise ValueError("MMD needs at least 2 samples per domain")
    # kernels in at least float32 (cdist has no bfloat16 kernel and half precision is too coarse)
    dt = torch.promote_types(f_s.dtype, torch.float32)
    f_s, f_t = f_s.flatten(1).to(dt), f_t.flatten(1).to(dt)
    s0 = base_bandwidth(torch.cat([f_s, f_t]), bandwidth, bandwidth_floor)
    exps = torch.arange(num_kernels, device=f_s.device, dtype=f_s.dtype) - num_kernels // 2
    bw = s0 * kernel_mul**exps
    if estimator == "linear":
        n = min(f_s.shape[0], f_t.shape[0]) // 2 * 2
        x1, x2, y1, y2 = f_s[0:n:2], f_s[1:n:2], f_t[0:n:2], f_t[1:n:2]

        def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.exp(-(a - b).pow(2).sum(1, keepdim=True).T / bw.view(-1, 1)).mean(0)

        return (k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)).mean()
    k_ss = gaussian_kernel_matrix(f_s, f_s, bw)
    k_tt = gaussian_kernel_matrix(f_t, f_t, bw)
    k_st = gaussian_kernel_matrix(f_s, f_t, bw)
    if estimator == "biased":
        return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()
    if estimator != "unbiased":
        raise ValueError(f"estimator must be 'unbiased', 'biased' or 'linear', got {estimator!r}")
    n, m = k_ss.shape[0], k_tt.shape[0]
    xx = (k_ss.sum() - k_ss.diagonal().sum()) / (n * (n - 1))
    yy = (k_tt.sum() - k_tt.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2 * k_st.mean()


@dataclass(frozen=True)
class MKMMDOptions:
    num_kernels: int = field(default=5, metadata={"help": "Number K of Gaussian kernels."})
    kernel_mul: float = field(default=2.0, metadata={"help": "Ratio between consecutive kernel bandwidths."})
    bandwidth: str = field(
        default="median",
        metadata={"help": "Base bandwidth s_0: median | mean pairwise squared distance of the pooled batch."},
    )
    estimator: str = field(default="unbiased", metadata={"help": "MMD estimator: unbiased | biased | linear."})


@register_loss(
    "dan",
    title="DAN, multi-kernel MMD",
    paper="https://arxiv.org/abs/1502.02791",
    config=MKMMDOptions,
    description="A multi-kernel maximum mean discrepancy between source and target features is minimised.",
)
class MKMMDLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        num_kernels, kernel_mul = self.options.num_kernels, self.options.kernel_mul
        bandwidth, estimator = self.options.bandwidth, self.options.estimator
        if bandwidth not in ("median", "mean"):
            raise ValueError(f"bandwidth must be 'median' or 'mean', got {bandwidth!r}")
        if estimator not in ("unbiased", "biased", "linear"):
            raise ValueError(f"estimator must be 'unbiased', 'biased' or 'linear', got {estimator!r}")
        if num_kernels < 1 or kernel_mul <= 0:
            raise ValueError("num_kernels must be >= 1 and kernel_mul > 0")
        self.num_kernels, self.kernel_mul = int(num_kernels), float(kernel_mul)
        self.bandwidth, self.estimator = bandwidth, estimator

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return mk_mmd(f_s, f_t, self.num_kernels, self.kernel_mul, self.bandwidth, self.estimator)

    def extra_repr(self) -> str:
        return (
            f"num_kernels={self.num_kernels}, kernel_mul={self.kernel_mul}, "
            f"bandwidth={self.bandwidth!r}, estimator={self.estimator!r}"
        )
