"""AaD: Attracting and Dispersing (Yang et al., NeurIPS 2022, https://arxiv.org/abs/2205.04183).

Source-free: a memory bank of every target training image's normalised features and softmax predictions (as
NRC's, :class:`~hf_transfer.methods.domain.source_free.MemoryBankLoss`). For a batch row ``i`` with prediction
``p_i`` and its ``k`` nearest bank rows ``N_i`` (cosine, itself left out):

    L = - 1/B sum_i sum_{j in N_i} s_j . p_i   +   lambda * 1/B sum_i sum_{j != i in the batch} p_j . p_i

neighbours' predictions attract (``s`` the banked predictions, constants), the other rows of the batch disperse
(the second term, through both ``p_i`` and ``p_j`` as in the authors' code). ``lambda = alpha * (1 + 10 q)^-beta``
decays over the training progress ``q``. The authors' VisDA setting: ``k`` 5, ``alpha`` 1, ``beta`` 5. The
classifier trains too; the backbone at 0.1x the learning rate, as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import _atleast_float32, require_logits
from hf_transfer.methods.domain.registry import register_loss
from hf_transfer.methods.domain.source_free import MemoryBankLoss, require_rows


@dataclass(frozen=True)
class AaDOptions:
    k: int = field(default=5, metadata={"help": "Nearest neighbours of each target row in the memory bank."})
    alpha: float = field(default=1.0, metadata={"help": "Initial weight of the dispersing term."})
    beta: float = field(default=5.0, metadata={"help": "Decay of that weight: alpha * (1 + 10 q)^-beta at progress q."})


def dispersion(probs: torch.Tensor) -> torch.Tensor:
    """The mean over the batch rows of the summed dot products with every OTHER row's prediction."""
    dots = probs @ probs.T
    return (dots.sum(1) - dots.diagonal()).mean()


@register_loss(
    "aad",
    source_free=True,
    backbone_lr_scale=0.1,
    title="AaD, attracting and dispersing (source-free)",
    paper="https://arxiv.org/abs/2205.04183",
    config=AaDOptions,
    soft_targets=False,
    description="Target predictions are attracted to those of their nearest neighbours in a memory bank and "
    "dispersed from the rest of the batch. No source data.",
)
class AaDLoss(MemoryBankLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(feature_dim, num_classes, **options)
        if self.options.k < 1:
            raise ValueError(f"k must be >= 1, got {self.options.k}")
        if self.options.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.options.alpha}")

    @property
    def dispersion_weight(self) -> float:
        """``alpha * (1 + 10 q)^-beta`` at the current progress ``q`` (a pure function of it)."""
        return self.options.alpha * (1 + 10 * self.progress) ** (-self.options.beta)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attracting and the weighted dispersing term of the module docstring."""
        logits_t = require_logits("aad", logits_t)
        rows = require_rows("aad", rows).long()
        probs = F.softmax(_atleast_float32(logits_t), dim=1)
        with torch.no_grad():
            normalised = self.write_batch(f_t, probs, rows)
            near = self.neighbours(normalised, self.options.k)
            score_near = self.get_buffer("score_bank")[near].to(probs)  # B x K x C
        attract = -(score_near * probs[:, None]).sum(-1).sum(1).mean()
        disperse = dispersion(probs)
        weight = self.dispersion_weight
        self.last_metrics = {"attract": float(attract.detach()), "disperse": float(disperse.detach()), "lambda": weight}
        return attract + weight * disperse

    def extra_repr(self) -> str:
        o = self.options
        return f"k={o.k}, alpha={o.alpha}, beta={o.beta}, progress={self.progress:.4f}"
