"""Domain discriminator shared by the adversarial methods (DANN, CDAN).

As in TLlib: ``Linear -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d -> ReLU -> Linear(1)``. It returns
one logit per sample (source = 1, target = 0) and is used with ``binary_cross_entropy_with_logits``
(numerically safer than a sigmoid followed by BCE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DomainDiscriminator(nn.Sequential):
    def __init__(self, in_feature: int, hidden_size: int = 1024, batch_norm: bool = True) -> None:
        if in_feature <= 0 or hidden_size <= 0:
            raise ValueError(f"in_feature and hidden_size must be > 0, got {in_feature}, {hidden_size}")

        def block(i: int, o: int) -> list[nn.Module]:
            if batch_norm:
                return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]
            return [nn.Linear(i, o), nn.ReLU(), nn.Dropout(0.5)]

        super().__init__(*block(in_feature, hidden_size), *block(hidden_size, hidden_size), nn.Linear(hidden_size, 1))


def domain_bce(d: torch.Tensor, n_s: int, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """BCE of discriminator logits ``d`` (first ``n_s`` rows source = 1, rest target = 0).

    Each domain's term is averaged separately, then the two are averaged, so a source/target batch
    ratio other than 1 does not weight one domain more than the other. ``weight`` (per sample,
    e.g. CDAN+E's entropy weights) is normalised within each domain. Returns (loss, accuracy).
    """
    d = d.reshape(-1)
    labels = torch.zeros_like(d)
    labels[:n_s] = 1.0
    per_sample = F.binary_cross_entropy_with_logits(d, labels, reduction="none")
    if weight is None:
        weight = torch.ones_like(d)
    weight = weight.reshape(-1).to(d.dtype)
    w_s, w_t = weight[:n_s], weight[n_s:]
    loss_s = (per_sample[:n_s] * w_s).sum() / w_s.sum()
    loss_t = (per_sample[n_s:] * w_t).sum() / w_t.sum()
    with torch.no_grad():
        acc = ((d > 0).to(d.dtype) == labels).to(torch.float32).mean().item()
    return 0.5 * (loss_s + loss_t), acc


def source_side_weight(source_weight: torch.Tensor | None, n_t: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Per-sample weights ``[source_weight, 1 ... 1]`` for :func:`domain_bce` (None when unweighted)."""
    if source_weight is None:
        return None
    w_s = source_weight.detach().reshape(-1).to(dtype)
    return torch.cat([w_s, torch.ones(n_t, dtype=dtype, device=w_s.device)])
