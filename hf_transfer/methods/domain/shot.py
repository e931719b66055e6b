"""SHOT: Source HypOthesis Transfer (Liang et al., ICML 2020, https://arxiv.org/abs/2002.08546).

Source-free: the trained classifier (the source hypothesis, the model's head) is frozen and only the features
train, on the target images alone. With ``p_i = softmax(logits_t_i)`` over a target batch of ``B`` rows:

    L = H_mean - diversity * H(p_mean)  +  pseudo_label_weight * 1/B sum_i CE(logits_t_i, y_hat_i)

the information-maximisation term (confident, diverse predictions; :func:`information_maximization_loss`) plus
the cross-entropy on self-supervised pseudo-labels ``y_hat``. At the start of every epoch, a pass of the current
model over every target training image gives features ``f`` (extended by a constant 1 and L2-normalised, as the
authors' code does for the cosine distance) and predictions ``P``; then, twice:

    c_k = sum_i a_ik f_i / sum_i a_ik        (class centroids; a = P the first time, one-hot labels the second)
    y_hat_i = argmin_{k: n_k > threshold} (1 - cos(f_i, c_k))

with ``n_k`` the number of rows currently assigned to class ``k`` (the authors' ``threshold``, 0). The
pseudo-labels are a persistent buffer (with the epoch they were made at), so a resumed run uses the labels its
epoch started with. The paper's weights: ``pseudo_label_weight`` 0.3, ``diversity`` 1; the backbone trains at
0.1x the learning rate (the authors' ``lr_decay1``). SHOT trains a bottleneck with weight normalisation on the
source first; here the classifier is whatever the ``--backbone`` run trained (e.g. a ``source_only`` run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import _atleast_float32, require_logits
from hf_transfer.methods.domain.entropy import information_maximization_loss
from hf_transfer.methods.domain.registry import register_loss
from hf_transfer.methods.domain.source_free import SourceFreeLoss, require_rows


@dataclass(frozen=True)
class SHOTOptions:
    pseudo_label_weight: float = field(
        default=0.3, metadata={"help": "Weight beta of the cross-entropy on the clustering pseudo-labels."}
    )
    diversity: float = field(default=1.0, metadata={"help": "Weight of the diversity term H(mean prediction)."})
    threshold: int = field(
        default=0,
        metadata={"help": "A class keeps its centroid only when more than this many rows are assigned to it."},
    )


def shot_pseudo_labels(features: torch.Tensor, logits: torch.Tensor, threshold: int = 0) -> torch.Tensor:
    """SHOT's pseudo-labels: nearest centroid (cosine) after one soft and one hard weighted k-means-style round."""
    f = _atleast_float32(features)
    f = torch.cat([f, torch.ones(f.shape[0], 1, dtype=f.dtype, device=f.device)], dim=1)
    f = F.normalize(f, dim=1)
    probs = F.softmax(_atleast_float32(logits), dim=1)
    num_classes = probs.shape[1]
    labels = probs.argmax(1)
    weights = probs
    for _ in range(2):
        centroids = weights.T @ f / (1e-8 + weights.sum(0)[:, None])
        counts = torch.bincount(labels, minlength=num_classes)
        kept = torch.nonzero(counts > threshold).flatten()
        distance = 1 - f @ F.normalize(centroids[kept], dim=1).T
        labels = kept[distance.argmin(1)]
        weights = F.one_hot(labels, num_classes).to(f.dtype)
    return labels


@register_loss(
    "shot",
    source_free=True,
    backbone_lr_scale=0.1,
    title="SHOT, source hypothesis transfer (source-free)",
    paper="https://arxiv.org/abs/2002.08546",
    config=SHOTOptions,
    soft_targets=False,
    description="The source classifier is frozen; the features learn confident, diverse target predictions "
    "and self-supervised pseudo-labels from class centroids recomputed every epoch. No source data.",
)
class SHOTLoss(SourceFreeLoss):
    frozen_head = True

    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        if self.options.pseudo_label_weight < 0 or self.options.diversity < 0:
            raise ValueError("pseudo_label_weight and diversity must be >= 0")
        if self.options.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.options.threshold}")
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("labels_epoch", torch.full((), -1, dtype=torch.long))

    def allocate(self, num_rows: int) -> None:
        """One pseudo-label per target training row."""
        self.pseudo_labels = torch.zeros(int(num_rows), dtype=torch.long, device=self.get_buffer("labels_epoch").device)

    def needs_refresh(self, epoch: int) -> bool:
        """At the start of every epoch (the epoch the labels were made at is in the checkpoint)."""
        return int(self.get_buffer("labels_epoch")) != int(epoch)

    @torch.no_grad()
    def refresh(self, features: torch.Tensor, logits: torch.Tensor, epoch: int) -> dict[str, float]:
        """New pseudo-labels from every target training row; returns how many changed class."""
        labels = self.get_buffer("pseudo_labels")
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"the pass gave {features.shape[0]} rows for {labels.shape[0]} pseudo-labels")
        new = shot_pseudo_labels(features, logits, self.options.threshold).to(labels.device)
        changed = float((new != labels).float().mean()) if int(self.get_buffer("labels_epoch")) >= 0 else 1.0
        agreement = float((new == logits.argmax(1).to(new.device)).float().mean())
        labels.copy_(new)
        self.get_buffer("labels_epoch").fill_(int(epoch))
        return {"pseudo_labels_changed": changed, "pseudo_labels_agree_with_head": agreement}

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Information maximisation + the weighted cross-entropy on the rows' pseudo-labels."""
        logits_t = require_logits("shot", logits_t)
        rows = require_rows("shot", rows)
        im = information_maximization_loss(logits_t, self.options.diversity)
        targets = self.get_buffer("pseudo_labels")[rows.long()]
        ce = F.cross_entropy(_atleast_float32(logits_t), targets)
        self.last_metrics = {"im": float(im.detach()), "pseudo_label_ce": float(ce.detach())}
        return im + self.options.pseudo_label_weight * ce

    def extra_repr(self) -> str:
        o = self.options
        return f"pseudo_label_weight={o.pseudo_label_weight}, diversity={o.diversity}, threshold={o.threshold}"
