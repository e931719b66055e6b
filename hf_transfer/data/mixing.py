"""Mixup and CutMix on a normalised training batch, through timm's own ``timm.data.Mixup``.

The batch is mixed on its device inside the model's forward, after the augmentation, so the fast and the stock
input paths mix the same way. The targets become class probabilities (soft targets); label smoothing is left
to the loss (``TrainingArguments.label_smoothing_factor``, applied to hard and soft targets alike), so timm's
Mixup is built with ``label_smoothing=0``. Its draws use numpy's global RNG, which the Trainer's checkpoints
save and restore, so resume stays exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_transfer.errors import TransferConfigError

__all__ = ["MIX_MODES", "BatchMixing"]

#: timm's ``mixup_mode``: one draw per batch, per pair of rows, or per row
MIX_MODES = ("batch", "pair", "elem")


class BatchMixing:
    """``(pixels [B, C, H, W], labels [B]) -> (mixed pixels, probabilities [B, num_classes])`` with timm's Mixup.

    timm mixes a batch with its own reverse and asks for an even size; an odd trailing batch keeps its middle
    row (the one paired with itself) out of the mix, with its one-hot target."""

    def __init__(
        self,
        num_classes: int,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
    ) -> None:
        from timm.data import Mixup

        if mixup <= 0 and cutmix <= 0:
            raise TransferConfigError("BatchMixing needs mixup > 0 or cutmix > 0 (the Beta distributions' alpha).")
        if mode not in MIX_MODES:
            raise TransferConfigError(f"mixup_mode={mode!r}: choose one of {MIX_MODES} (timm's Mixup modes).")
        self.num_classes = int(num_classes)
        self.mixup = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=prob,
            switch_prob=switch_prob,
            mode=mode,
            label_smoothing=0.0,
            num_classes=self.num_classes,
        )

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix the batch in place (as timm does) and return it with its probability targets."""
        if labels.dim() != 1:
            raise ValueError(f"BatchMixing expects class ids [B], got labels of shape {tuple(labels.shape)}.")
        if bool((labels < 0).any()):
            raise ValueError("BatchMixing got unlabelled rows (-1): mixing needs a label for every row it mixes.")
        b = pixels.shape[0]
        if b < 2:
            return pixels, F.one_hot(labels, self.num_classes).to(pixels.dtype)
        if b % 2 == 0:
            mixed, targets = self.mixup(pixels, labels)
            return mixed, targets.to(pixels.dtype)
        middle = b // 2
        keep = [i for i in range(b) if i != middle]
        mixed, targets = self.mixup(pixels[keep], labels[keep])
        out_pixels = pixels.clone()
        out_pixels[keep] = mixed
        out_targets = F.one_hot(labels, self.num_classes).to(pixels.dtype)
        out_targets[keep] = targets.to(pixels.dtype)
        return out_pixels, out_targets
