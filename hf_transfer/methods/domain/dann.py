"""DANN: Domain-Adversarial Neural Networks (Ganin et al., JMLR 2016, https://arxiv.org/abs/1505.07818).

A domain discriminator ``D`` is trained to tell source (label 1) from target (label 0) features,
through a gradient reversal layer ``R_lambda``:

    L_dann = 1/2 * BCE(D(R(f_s)), 1) + 1/2 * BCE(D(R(f_t)), 0)

``D`` minimises ``L_dann``; the feature extractor receives ``-lambda * dL_dann/df``, i.e. maximises it.
``lambda(p) = hi * (2 / (1 + exp(-alpha * p)) - 1)`` with ``p`` the training progress (the paper's
ramp), held at 0 for the first ``hold`` fraction of training. The default ``hold=0.15`` departs from
the paper on purpose: in a prototype on digits, DANN collapsed (source accuracy at chance) in one
seed out of three when the ramp started at step 0, while the classifier was still at chance loss;
holding lambda at 0 for the first ~15% of training fixed it. Pass ``hold=0`` for the paper schedule.
The discriminator still learns during the hold. At initialisation ``L_dann`` is about ``log 2``.
With ``source_weight`` set (PADA, partial label spaces) the source term is a weighted mean.
"""
from __future__ import annotations

import torch

from hf_transfer.methods.domain.base import TransferLoss
from hf_transfer.methods.domain.discriminator import DomainDiscriminator, domain_bce, source_side_weight
from hf_transfer.methods.domain.grl import grad_reverse, grl_coefficient
from hf_transfer.methods.domain.registry import register_loss


@register_loss("dann")
class DANNLoss(TransferLoss):
    paper = "https://arxiv.org/abs/1505.07818"
    needs_logits = False
    uses_source_weight = True

    def __init__(
        self,
        feature_dim: int,
        num_classes: int = 0,
        hidden_size: int = 1024,
        alpha: float = 10.0,
        hi: float = 1.0,
        hold: float = 0.15,
    ) -> None:
        super().__init__()
        grl_coefficient(0.0, alpha=alpha, hi=hi, hold=hold)  # validate early
        self.alpha, self.hi, self.hold = float(alpha), float(hi), float(hold)
        self.discriminator = DomainDiscriminator(feature_dim, hidden_size)

    @property
    def coefficient(self) -> float:
        """Current gradient-reversal coefficient (a pure function of ``self.progress``)."""
        return grl_coefficient(self.progress, alpha=self.alpha, hi=self.hi, hold=self.hold)

    def forward(self, f_s, f_t, logits_s=None, logits_t=None) -> torch.Tensor:
        coeff = self.coefficient
        f = grad_reverse(torch.cat([f_s, f_t], dim=0), coeff)
        weight = source_side_weight(self.source_weight, f_t.shape[0], f.dtype)
        loss, acc = domain_bce(self.discriminator(f), f_s.shape[0], weight)
        self.last_metrics = {"grl_coeff": coeff, "domain_acc": acc}
        return loss

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, hi={self.hi}, hold={self.hold}, progress={self.progress:.4f}"
