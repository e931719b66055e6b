"""Partial domain adaptation: the target's classes are a strict subset of the source's.

Source classes the target lacks pull target features towards classes that never occur there
(negative transfer). ``partial_weighting`` chooses what to do about them:

- ``exclude`` (default): drop the source TRAINING rows of classes the target dataset does not
  declare (its ``ClassLabel`` names: label-space metadata, never per-sample target labels). The
  head keeps every source class, so they still get (negative) gradient and are rarely predicted.
  Default because when the declared label space already says which classes are absent, that is
  exact and free, whereas PADA estimates the same thing from noisy predictions; when the target
  declares every source class, there is nothing to exclude and it is a no-op.
- ``pada``: PADA (Cao et al., ECCV 2018, https://arxiv.org/abs/1808.04205). Class weights
  ``w = mean_{target train x} softmax(f(x))``, normalised by ``max(w)``, re-estimated every
  ``pada_every`` optimizer steps (uniform before the first estimate). They weight the source
  cross-entropy per class and, for the adversarial methods (``dann``, ``cdan``), the source
  side of the domain loss. For targets whose declared labels do not reveal the subset.
- ``none``: train on every source class as is.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)
#: a class whose PADA weight falls below this is reported as down-weighted
DOWN_WEIGHTED_BELOW = 0.5


def classes_to_exclude(alignment: Any, label_names: list[str]) -> list[str]:
    """Source classes the target does not declare and that are still in the label space."""
    if alignment is None:
        return []
    return [n for n in alignment.source_only if n in label_names]


def drop_classes(ds: datasets.Dataset, label_names: list[str], classes: list[str]) -> datasets.Dataset:
    """Rows of ``ds`` whose label is not in ``classes``."""
    if not classes:
        return ds
    ids = {label_names.index(c) for c in classes}
    labels = np.asarray(ds["label"], dtype=np.int64)
    return ds.select(np.flatnonzero(~np.isin(labels, list(ids))))


class ClassWeights(nn.Module):
    """PADA class weights as a buffer: saved in Trainer checkpoints, so a resumed run continues
    with the weights of the last estimate."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.ones(num_classes))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """``probs`` [N, K]: target softmax outputs -> mean over N, divided by its max."""
        w = probs.float().mean(0)
        weights = self.get_buffer("weights")
        weights.copy_((w / w.max().clamp_min(1e-12)).to(weights))
        self.get_buffer("updates").add_(1)


def pada_summary(weights: ClassWeights, label_names: list[str], every: int) -> dict:
    """What PADA did (the class weights of its last estimate), for results.json and the card."""
    w = weights.get_buffer("weights").detach().cpu().tolist()
    return {
        "method": "pada",
        "every_steps": every,
        "updates": int(weights.get_buffer("updates")),
        "class_weights": {n: round(float(v), 4) for n, v in zip(label_names, w, strict=True)},
        "down_weighted": [n for n, v in zip(label_names, w, strict=True) if v < DOWN_WEIGHTED_BELOW],
        "down_weighted_below": DOWN_WEIGHTED_BELOW,
        "paper": "https://arxiv.org/abs/1808.04205",
    }


class PADACallback(TrainerCallback):
    """Re-estimate the class weights (``weighting.estimate_class_weights(model)``) at the start of
    every ``every``-th optimizer step (never at step 0: the model is untrained). Steps come from the Trainer's
    checkpointed state, so the estimates fall on the same steps after a resume."""

    def __init__(self, weighting: Any, every: int) -> None:
        self.weighting, self.every = weighting, int(every)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if state.global_step > 0 and state.global_step % self.every == 0:
            self.weighting.estimate_class_weights(model)
