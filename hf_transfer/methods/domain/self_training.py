"""Self-training methods: ``pseudo_label``, ``cbst`` and ``fixmatch`` (formulas in each class).

``pseudo_label``: confidence-thresholded pseudo-labels (self-training; FixMatch-style threshold,
Sohn et al., NeurIPS 2020, https://arxiv.org/abs/2001.07685).

    q_i = softmax(logits_t_i).detach(),   m_i = 1[max_c q_ic >= tau]
    L_pl = 1/B * sum_i m_i * CE(logits_t_i, argmax_c q_ic)

with ``tau = threshold`` (0.95 as in FixMatch) and ``B`` the target batch size (FixMatch's
normalisation, so the loss grows with the fraction of confident samples). FixMatch takes ``q`` from a
weakly augmented view and the cross-entropy on a strongly augmented view; ``pseudo_label`` uses one
target view per step (``fixmatch`` below uses two), so the labels come from the same forward pass, detached.
That makes it a sharpening of confident predictions (akin to entropy minimisation restricted to confident
samples) rather than consistency regularisation. ``last_metrics["mask_rate"]`` is the fraction of target
samples above the threshold; ``0`` when nothing passes (the loss is then exactly 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hf_transfer.methods.domain.base import TransferLoss, require_logits
from hf_transfer.methods.domain.registry import register_loss


@dataclass(frozen=True)
class PseudoLabelOptions:
    threshold: float = field(
        default=0.95,
        metadata={"help": "Confidence a target prediction needs to become a pseudo-label (FixMatch's tau)."},
    )


@register_loss(
    "pseudo_label",
    title="Pseudo-labelling (self-training)",
    paper="https://arxiv.org/abs/2001.07685",
    config=PseudoLabelOptions,
    description="Confident target predictions are trained on as labels (confidence-thresholded self-training).",
)
class PseudoLabelLoss(TransferLoss):
    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        threshold = self.options.threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_t = require_logits("pseudo_label", logits_t)
        with torch.no_grad():
            conf, labels = F.softmax(logits_t.detach().float(), dim=1).max(dim=1)
            mask = (conf >= self.threshold).to(logits_t.dtype)
        ce = F.cross_entropy(logits_t, labels, reduction="none")
        self.last_metrics = {"mask_rate": mask.float().mean().item()}
        return (ce * mask).sum() / max(logits_t.shape[0], 1)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


def class_balanced_mask(conf: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per predicted class ``c``, 1 for the ``ceil(fraction * n_c)`` most confident of its ``n_c`` samples.

    The batch-level version of CBST's class-normalised thresholds (each class keeps the same
    fraction of its own predictions, whatever its confidence scale). Ties at the cut keep the earlier
    index. ``fraction <= 0`` selects nothing, ``fraction >= 1`` everything.
    """
    mask = torch.zeros_like(conf, dtype=torch.bool)
    if fraction <= 0:
        return mask
    for c in labels.unique():
        idx = (labels == c).nonzero(as_tuple=True)[0]
        k = min(len(idx), math.ceil(fraction * len(idx) - 1e-9))
        if k > 0:
            mask[idx[conf[idx].topk(k).indices]] = True
    return mask


@dataclass(frozen=True)
class CBSTOptions:
    fraction: float = field(
        default=0.5,
        metadata={"help": "Fraction p of each predicted class kept as pseudo-labels at the end of training."},
    )
    fraction_start: float = field(
        default=0.2, metadata={"help": "Fraction p at the start of training (grows linearly to fraction)."}
    )


@register_loss(
    "cbst",
    title="CBST, class-balanced self-training",
    paper="https://arxiv.org/abs/1810.07911",
    config=CBSTOptions,
    description="Pseudo-labels from the most confident fraction of every predicted class, growing over training.",
)
class ClassBalancedSelfTrainingLoss(TransferLoss):
    """Class-balanced self-training (CBST; Zou et al., ECCV 2018, https://arxiv.org/abs/1810.07911).

    CBST picks pseudo-labels with one confidence threshold PER CLASS, ``k_c`` = the confidence at
    rank ``p * N_c`` among the ``N_c`` target samples predicted as ``c``, so that every predicted
    class keeps the same fraction ``p`` of its samples (a global threshold lets the easy, dominant
    classes take almost all pseudo-labels and reinforces them). ``p`` grows over the rounds (20% ->
    50% in the paper). Here the ranking is done within each target batch (no offline rounds), and
    ``p`` grows linearly with training progress from ``fraction_start`` to ``fraction``:

        q_i = softmax(logits_t_i).detach(),  y_i = argmax_c q_ic,  p(t) = p0 + (p1 - p0) * t
        m_i = 1[q_{i,y_i} is among the ceil(p(t) * n_{y_i}) largest confidences of class y_i in the batch]
        L_cbst = 1/B * sum_i m_i * CE(logits_t_i, y_i)

    ``last_metrics``: ``mask_rate`` (fraction selected) and ``fraction`` (``p(t)``).
    """

    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        fraction, fraction_start = self.options.fraction, self.options.fraction_start
        for name, value in (("fraction", fraction), ("fraction_start", fraction_start)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.fraction, self.fraction_start = float(fraction), float(fraction_start)

    def current_fraction(self) -> float:
        """The fraction of target rows pseudo-labelled now: from ``fraction_start`` to ``fraction`` over training."""
        return self.fraction_start + (self.fraction - self.fraction_start) * self.progress

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_t = require_logits("cbst", logits_t)
        p = self.current_fraction()
        with torch.no_grad():
            conf, labels = F.softmax(logits_t.detach().float(), dim=1).max(dim=1)
            mask = class_balanced_mask(conf, labels, p).to(logits_t.dtype)
        ce = F.cross_entropy(logits_t, labels, reduction="none")
        self.last_metrics = {"mask_rate": mask.float().mean().item(), "fraction": p}
        return (ce * mask).sum() / max(logits_t.shape[0], 1)

    def extra_repr(self) -> str:
        return f"fraction_start={self.fraction_start}, fraction={self.fraction}, progress={self.progress:.4f}"


def strong_view(
    x: torch.Tensor,
    translate: float = 0.125,
    rotate: float = 15.0,
    shear: float = 0.2,
    contrast: float = 0.5,
    brightness: float = 0.5,
    cutout: float = 0.4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A cheap strong augmentation of an already normalised float batch ``[B, C, H, W]``.

    Per sample: a random affine warp (rotation +-``rotate`` degrees, shear +-``shear``, translation
    +-``translate`` of the size; bilinear, zero = the mean colour outside), contrast
    ``x -> m + a (x - m)`` with ``a`` in ``[1 - contrast, 1 + contrast]`` around the image mean
    ``m``, brightness ``+ b`` with ``b`` in ``[-brightness, brightness]`` (normalised units), and one
    cutout square of side up to ``cutout`` of the image set to 0 (FixMatch's RandAugment + Cutout,
    reduced to tensor ops). Random draws on the CPU (``generator`` or the global RNG).
    """
    b, _, h, w = x.shape
    dtype, device = x.dtype, x.device

    def u(*shape: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(*shape, generator=generator)).to(device)

    theta = u(b) * math.radians(rotate)
    sh = u(b) * shear
    cos, sin = torch.cos(theta), torch.sin(theta)
    mat = torch.stack(
        [torch.stack([cos, -sin + sh, u(b) * 2 * translate], 1), torch.stack([sin, cos, u(b) * 2 * translate], 1)], 1
    ).float()
    grid = F.affine_grid(mat, [b, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + u(b, 1, 1, 1, lo=1 - contrast, hi=1 + contrast) * (out - mean) + u(b, 1, 1, 1) * brightness
    if cutout > 0:
        side = (u(b, lo=0.0, hi=cutout) * min(h, w)).round().long()
        cy, cx = (u(b, lo=0.0, hi=1.0) * h).long(), (u(b, lo=0.0, hi=1.0) * w).long()
        ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
        half = side // 2
        inside_y = (ys[None] >= (cy - half)[:, None]) & (ys[None] < (cy - half + side)[:, None])
        inside_x = (xs[None] >= (cx - half)[:, None]) & (xs[None] < (cx - half + side)[:, None])
        hole = inside_y[:, :, None] & inside_x[:, None, :]
        out = out.masked_fill(hole[:, None], 0.0)
    return out.to(dtype)


@dataclass(frozen=True)
class FixMatchOptions:
    threshold: float = field(
        default=0.95, metadata={"help": "Confidence a weak-view prediction needs to become a pseudo-label."}
    )
    translate: float = field(default=0.125, metadata={"help": "Strong view: largest shift, as a fraction of the size."})
    rotate: float = field(default=15.0, metadata={"help": "Strong view: largest rotation in degrees."})
    cutout: float = field(
        default=0.4, metadata={"help": "Strong view: largest cutout side, as a fraction of the size."}
    )


@register_loss(
    "fixmatch",
    title="FixMatch-style consistency",
    paper="https://arxiv.org/abs/2001.07685",
    config=FixMatchOptions,
    description="Pseudo-labels from the target batch train the predictions on a strongly augmented view of it.",
)
class FixMatchLoss(TransferLoss):
    """FixMatch-style consistency (Sohn et al., NeurIPS 2020, https://arxiv.org/abs/2001.07685).

    Pseudo-labels from the weakly augmented target view ``w`` (the target batch as the input
    pipeline augmented it), cross-entropy on a strongly augmented view ``s`` of the SAME images
    (:func:`strong_view`, computed by :meth:`second_view` and passed through the model in the same
    forward as source and weak target):

        q_i = softmax(logits_w_i).detach(),   m_i = 1[max_c q_ic >= tau]
        L_fm = 1/B * sum_i m_i * CE(logits_s_i, argmax_c q_ic)

    ``target_views = 2``: the caller passes ``f_t`` / ``logits_t`` with the ``B`` weak rows first and
    the ``B`` strong rows after them. No gradient flows through the weak view. ``tau = threshold``
    (0.95 as in FixMatch). ``last_metrics``: ``mask_rate``, and ``strong_agreement`` (fraction of
    strong-view predictions equal to the weak pseudo-label).
    """

    target_views = 2

    def __init__(self, feature_dim: int = 0, num_classes: int = 0, **options: Any) -> None:
        super().__init__(**options)
        threshold, translate = self.options.threshold, self.options.translate
        rotate, cutout = self.options.rotate, self.options.cutout
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.translate, self.rotate, self.cutout = float(translate), float(rotate), float(cutout)

    def second_view(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The strong view of a (weakly augmented, normalised) target batch."""
        return strong_view(pixel_values, translate=self.translate, rotate=self.rotate, cutout=self.cutout)

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor | None = None,
        logits_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits_t = require_logits("fixmatch", logits_t)
        if logits_t.shape[0] % 2:
            raise ValueError(
                f"fixmatch expects the weak then the strong target rows (an even count), got {logits_t.shape[0]} rows"
            )
        weak, strong = logits_t.chunk(2)
        with torch.no_grad():
            conf, labels = F.softmax(weak.detach().float(), dim=1).max(dim=1)
            mask = (conf >= self.threshold).to(strong.dtype)
        ce = F.cross_entropy(strong, labels, reduction="none")
        self.last_metrics = {
            "mask_rate": mask.float().mean().item(),
            "strong_agreement": (strong.detach().argmax(1) == labels).float().mean().item(),
        }
        return (ce * mask).sum() / max(weak.shape[0], 1)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, translate={self.translate}, rotate={self.rotate}, cutout={self.cutout}"
