"""CDAN and CDAN+E: Conditional Adversarial Domain Adaptation (Long et al., NeurIPS 2018,
https://arxiv.org/abs/1705.10667).

The discriminator sees the multilinear map of features ``f`` and class predictions
``g = softmax(logits)`` (detached, as in the paper's code):

    T(f, g) = f ⊗ g                                   (flattened outer product, d * C dims), or
    T(f, g) = (R_f f) ⊙ (R_g g) / sqrt(m)             (randomized map, R_f, R_g fixed Gaussian, m dims)

the randomized map being used when ``d * C > 4096`` (``randomized=None``), as in the paper.

    L_cdan = 1/2 * sum_s w_i BCE(D(R(T_i)), 1) / sum_s w_i + 1/2 * sum_t w_j BCE(D(R(T_j)), 0) / sum_t w_j

with ``R`` the gradient reversal layer (same schedule as DANN: ``alpha``, ``hi``, ``hold``) and
``w = 1`` for CDAN, ``w = 1 + exp(-H(g))`` for CDAN+E (``entropy_conditioning=True``), which puts more
weight on confidently classified (easy-to-transfer) samples. Weights are detached and normalised
within each domain, as in the paper's code. ``source_weight`` (PADA) multiplies the source weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import AdversarialLoss, GRLOptions, entropy, require_logits
from hf_transfer.methods.domain.discriminator import DomainDiscriminator, domain_bce, source_side_weight
from hf_transfer.methods.domain.registry import register_loss

MAX_MULTILINEAR_DIM = 4096


@dataclass(frozen=True)
class CDANOptions(GRLOptions):
    entropy_conditioning: bool = field(
        default=False, metadata={"help": "CDAN+E: weight samples by 1 + exp(-entropy of their prediction)."}
    )
    randomized: bool | None = field(
        default=None, metadata={"help": "Randomized multilinear map (default: when feature_dim * num_classes > 4096)."}
    )
    randomized_dim: int = field(default=1024, metadata={"help": "Output size of the randomized multilinear map."})
    hidden_size: int = field(default=1024, metadata={"help": "Width of the domain discriminator's hidden layers."})
    seed: int = field(default=0, metadata={"help": "Seed of the randomized map's fixed projections."})


@register_loss(
    "cdan",
    title="CDAN, conditional domain-adversarial training",
    paper="https://arxiv.org/abs/1705.10667",
    config=CDANOptions,
    description="The discriminator sees features conditioned on the class predictions.",
)
class CDANLoss(AdversarialLoss):
    uses_source_weight = True

    def __init__(self, feature_dim: int, num_classes: int, **options: Any) -> None:
        super().__init__(**options)
        if num_classes < 1:
            raise ValueError(f"CDAN needs num_classes >= 1, got {num_classes}")
        o = self.options
        randomized, randomized_dim, hidden_size, seed = o.randomized, o.randomized_dim, o.hidden_size, o.seed
        self.entropy_conditioning = bool(o.entropy_conditioning)
        if randomized is None:
            randomized = feature_dim * num_classes > MAX_MULTILINEAR_DIM
        self.randomized = bool(randomized)
        if self.randomized:
            # Fixed random projections: buffers (saved in checkpoints), drawn from a private
            # generator so every process of a distributed run gets the same matrices.
            gen = torch.Generator().manual_seed(int(seed))
            self.register_buffer("Rf", torch.randn(feature_dim, randomized_dim, generator=gen))
            self.register_buffer("Rg", torch.randn(num_classes, randomized_dim, generator=gen))
            in_dim = randomized_dim
        else:
            in_dim = feature_dim * num_classes
        self.map_dim = in_dim
        self.discriminator = DomainDiscriminator(in_dim, hidden_size)

    def multilinear_map(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """T(f, g) of the module docstring: the randomized map or the flattened outer product."""
        if self.randomized:
            rf, rg = self.get_buffer("Rf"), self.get_buffer("Rg")
            return (f @ rf.to(f.dtype)) * (g @ rg.to(g.dtype)) / math.sqrt(self.map_dim)
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
        source_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_s = require_logits("cdan", logits_s)
        logits_t = logits_t = require_logits("cdan", logits_t)
        f = torch.cat([f_s, f_t], dim=0)
        g = F.softmax(torch.cat([logits_s, logits_t], dim=0).detach().float(), dim=1).to(f.dtype)
        h, coeff = self.reverse(self.multilinear_map(f, g))
        weight = 1.0 + torch.exp(-entropy(g)) if self.entropy_conditioning else None
        side = source_side_weight(source_weight, f_t.shape[0], f.dtype)
        if side is not None:  # PADA: class weights on the source side (times CDAN+E's, if any)
            weight = side if weight is None else weight * side
        loss, acc = domain_bce(self.discriminator(h), f_s.shape[0], weight)
        self.last_metrics = {"grl_coeff": coeff, "domain_acc": acc}
        return loss

    def extra_repr(self) -> str:
        return (
            f"entropy_conditioning={self.entropy_conditioning}, randomized={self.randomized}, "
            f"map_dim={self.map_dim}, {super().extra_repr()}"
        )
