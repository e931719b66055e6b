"""Train and eval transforms built from a backbone's pretrained data config.

The config (mean, std, input size, crop_pct, interpolation) comes from the backbone (timm's
``pretrained_cfg`` or a transformers image processor), so preprocessing always matches what the
backbone was pretrained with, and the same numbers are written to the exported folder.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torchvision import transforms as T

AUGMENTATIONS = ("standard", "light", "none")
_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass
class DataConfig:
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.input_size[-1])

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        out["input_size"] = list(self.input_size)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def fingerprint(self) -> str:
        return repr(sorted(self.to_dict().items()))


def eval_transform(cfg: DataConfig) -> T.Compose:
    """Resize the short side to size/crop_pct, then center-crop: timm's eval recipe."""
    interp = _INTERPOLATION.get(cfg.interpolation, T.InterpolationMode.BILINEAR)
    resize = int(math.floor(cfg.size / cfg.crop_pct))
    return T.Compose(
        [
            T.Resize(resize, interpolation=interp),
            T.CenterCrop(cfg.size),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


def train_transform(cfg: DataConfig, augment: str = "standard") -> T.Compose:
    """``standard``: RandomResizedCrop + flip (natural images). ``light``: small shifts and scales
    only, no flip (digits, text, anything whose meaning a flip changes). ``none``: eval transform."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}.")
    if augment == "none":
        return eval_transform(cfg)
    interp = _INTERPOLATION.get(cfg.interpolation, T.InterpolationMode.BILINEAR)
    if augment == "standard":
        ops = [T.RandomResizedCrop(cfg.size, interpolation=interp), T.RandomHorizontalFlip()]
    else:
        ops = [T.RandomResizedCrop(cfg.size, scale=(0.75, 1.0), ratio=(0.9, 1.1), interpolation=interp)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


def make_batch_transform(transform, with_labels: bool = True):
    """A ``Dataset.with_transform`` function: PIL images -> ``pixel_values`` (+ ``labels``)."""

    def apply(batch):
        out = {"pixel_values": [transform(img.convert("RGB")) for img in batch["image"]]}
        if with_labels and "label" in batch:
            out["labels"] = batch["label"]
        return out

    return apply
