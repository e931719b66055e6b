"""BSP: Batch Spectral Penalization (Chen et al., ICML 2019, http://proceedings.mlr.press/v97/chen19i.html).

Adversarial alignment makes features transferable at the cost of their discriminability: the paper finds the
feature batch's spectrum dominated by its few largest singular values, which carry the domain-invariant part,
while the rest (the class information) shrinks. BSP penalises the ``k`` largest singular values of the source
and of the target feature batch, on top of DANN:

    L_bsp  = L_dann + beta * sum_{i <= k} (sigma_i(F_s)^2 + sigma_i(F_t)^2)

with ``F_s``, ``F_t`` the (B x d) feature batches and ``L_dann`` :mod:`~hf_transfer.methods.domain.dann` (its
options: ``alpha``, ``hi``, ``hold``, ``hidden_size``). The paper and TLlib take ``k = 1`` and
``beta = 2e-4``; the penalty is NOT behind the gradient reversal layer (the features minimise it), and the
mode's ``trade_off`` weighs the sum. With ``source_weight`` (PADA) the source rows are scaled by
``sqrt(w)``, so ``sigma_i(F_s)^2`` are the eigenvalues of the weighted ``sum_i w_i f_i f_i^T``. The singular
values are taken in float32 at least (half precision has no SVD on most devices).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from hf_transfer.methods.domain.base import TransferLoss, _atleast_float32
from hf_transfer.methods.domain.dann import DANNLoss, DANNOptions
from hf_transfer.methods.domain.registry import register_loss


def spectral_penalty(features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The sum of the ``k`` largest squared singular values of a (B x d) feature batch."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return torch.linalg.svdvals(_atleast_float32(features.flatten(1)))[:k].pow(2).sum()


@dataclass(frozen=True)
class BSPOptions(DANNOptions):
    k: int = field(
        default=1, metadata={"help": "How many of the largest singular values are penalised (1 in the paper)."}
    )
    beta: float = field(default=2e-4, metadata={"help": "Weight of the spectral penalty beside the DANN loss."})


@register_loss(
    "bsp",
    title="BSP, batch spectral penalization (on DANN)",
    paper="http://proceedings.mlr.press/v97/chen19i.html",
    config=BSPOptions,
    description="DANN plus a penalty on the largest singular values of each domain's feature batch, "
    "which keeps the features discriminative.",
)
class BSPLoss(TransferLoss):
    uses_source_weight = True

    def __init__(self, feature_dim: int, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        if self.options.k < 1:
            raise ValueError(f"k must be >= 1, got {self.options.k}")
        if self.options.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.options.beta}")
        dann_names = {f.name for f in dataclasses.fields(DANNOptions)}
        self.dann = DANNLoss(
            feature_dim, **{k: v for k, v in dataclasses.asdict(self.options).items() if k in dann_names}
        )

    def set_progress(self, progress: float) -> None:
        """The progress drives DANN's reversal schedule too."""
        super().set_progress(progress)
        self.dann.set_progress(progress)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
        source_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DANN's loss plus ``beta`` times the spectral penalty of both feature batches."""
        adversarial = self.dann(f_s, f_t, source_weight=source_weight)
        weighted_s = f_s if source_weight is None else f_s * source_weight.detach().to(f_s.dtype).sqrt().view(-1, 1)
        penalty = spectral_penalty(weighted_s, self.options.k) + spectral_penalty(f_t, self.options.k)
        self.last_metrics = {
            **self.dann.last_metrics,
            "dann": float(adversarial.detach()),
            "bsp": float(penalty.detach()),
        }
        return adversarial + self.options.beta * penalty

    def extra_repr(self) -> str:
        return f"k={self.options.k}, beta={self.options.beta}"
