"""Confidence-thresholded pseudo-labels (self-training; FixMatch-style threshold,
Sohn et al., NeurIPS 2020, https://arxiv.org/abs/2001.07685).

    q_i = softmax(logits_t_i).detach(),   m_i = 1[max_c q_ic >= tau]
    L_pl = 1/B * sum_i m_i * CE(logits_t_i, argmax_c q_ic)

with ``tau = threshold`` (0.95 as in FixMatch) and ``B`` the target batch size (FixMatch's
normalisation, so the loss grows with the fraction of confident samples). FixMatch takes ``q`` from a
weakly augmented view and the cross-entropy on a strongly augmented view; this contract has only one
target view per step, so the labels come from the same forward pass, detached. That makes it a
sharpening of confident predictions (akin to entropy minimisation restricted to confident samples)
rather than consistency regularisation. ``last_metrics["mask_rate"]`` is the fraction of target
samples above the threshold; ``0`` when nothing passes (the loss is then exactly 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TransferLoss, require_logits
from .registry import register_loss


@register_loss("pseudo_label")
class PseudoLabelLoss(TransferLoss):
    paper = "https://arxiv.org/abs/2001.07685"
    needs_logits = True

    def __init__(self, feature_dim: int = 0, num_classes: int = 0, threshold: float = 0.95) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)

    def forward(self, f_s, f_t, logits_s=None, logits_t=None) -> torch.Tensor:
        require_logits("pseudo_label", logits_t)
        with torch.no_grad():
            conf, labels = F.softmax(logits_t.detach().float(), dim=1).max(dim=1)
            mask = (conf >= self.threshold).to(logits_t.dtype)
        ce = F.cross_entropy(logits_t, labels, reduction="none")
        self.last_metrics = {"mask_rate": mask.float().mean().item()}
        return (ce * mask).sum() / max(logits_t.shape[0], 1)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
