"""Train and eval transforms built from a backbone's pretrained data config.

The config (mean, std, input size, crop_pct, interpolation, crop_mode) comes from the backbone (timm's
``pretrained_cfg`` or a transformers image processor), so preprocessing always matches what the
backbone was pretrained with, and the same numbers are written to the exported folder.

The eval geometry (:func:`eval_geometry`) is timm's ``transforms_imagenet_eval`` for every ``crop_mode``
(what the exported ``TimmWrapperImageProcessor`` runs when the model is served), built from timm's own
ops, and both input paths use it: the stock :func:`eval_transform` and the decoded cache's eval storage.

- ``center``: short side to ``floor(size / crop_pct)``, aspect kept, center crop (image is lost at the sides);
- ``squash``: both sides to ``floor(size / crop_pct)`` (aspect NOT kept), center crop;
- ``border``: long side to ``floor(size / crop_pct)``, aspect kept, center crop or pad with the mean colour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torchvision import transforms as T

from hf_transfer.data.images import to_rgb
from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

#: one PIL image -> one normalised tensor (a torchvision ``Compose``)
ImageTransform = Callable[["Image.Image"], "torch.Tensor"]
#: a ``Dataset.with_transform`` function over a batch of rows (column -> values)
BatchTransform = Callable[[dict[str, list[Any]]], dict[str, list[Any]]]

AUGMENTATIONS = ("standard", "light", "none")
CROP_MODES = ("center", "squash", "border")
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

    def __post_init__(self) -> None:
        if self.crop_mode not in CROP_MODES:  # timm's create_transform would silently fall back to center
            raise TransferConfigError(
                f"Data config crop_mode={self.crop_mode!r} is not one of {CROP_MODES} (timm's eval crop modes)."
            )

    @property
    def size(self) -> int:
        """The square side, in pixels, that the model sees."""
        return int(self.input_size[-1])

    @property
    def border_fill(self) -> tuple[int, int, int]:
        """The padding colour of ``crop_mode='border'``: the mean, in 0..255, as timm pads."""
        red, green, blue = (round(255 * v) for v in self.mean)
        return red, green, blue

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (lists, not tuples) for results.json, cards and cache keys."""
        out = asdict(self)
        out.pop("extra")
        out["input_size"] = list(self.input_size)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def fingerprint(self) -> str:
        """A stable text of every field, so caches keyed on it change when the preprocessing does."""
        return repr(sorted(self.to_dict().items()))


def eval_geometry(cfg: DataConfig) -> T.Compose:
    """PIL -> PIL: the resize and crop of timm's ``transforms_imagenet_eval`` for ``cfg.crop_mode`` (module doc)."""
    from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio

    interp = _INTERPOLATION.get(cfg.interpolation, T.InterpolationMode.BILINEAR)
    scale = int(math.floor(cfg.size / cfg.crop_pct))
    if cfg.crop_mode == "squash":
        return T.Compose([T.Resize((scale, scale), interpolation=interp), T.CenterCrop(cfg.size)])
    if cfg.crop_mode == "border":
        return T.Compose(
            [
                ResizeKeepRatio((scale, scale), interpolation=interp.value, longest=1.0),
                CenterCropOrPad(cfg.size, fill=cfg.border_fill),
            ]
        )
    return T.Compose([T.Resize(scale, interpolation=interp), T.CenterCrop(cfg.size)])


def eval_transform(cfg: DataConfig) -> T.Compose:
    """Timm's eval recipe: :func:`eval_geometry`, then ``ToTensor`` and ``Normalize``."""
    return T.Compose([*eval_geometry(cfg).transforms, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])


def train_transform(cfg: DataConfig, augment: str = "standard") -> T.Compose:
    """The PIL training transform of the stock input path for the ``augment`` recipe.

    ``standard``: RandomResizedCrop + flip (natural images). ``light``: small shifts and scales only, no flip
    (digits, text, anything whose meaning a flip changes). ``none``: eval transform."""
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


def make_batch_transform(transform: ImageTransform, with_labels: bool = True) -> BatchTransform:
    """A ``Dataset.with_transform`` function: PIL images -> ``pixel_values`` (+ ``labels``)."""

    def apply(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"pixel_values": [transform(to_rgb(img)) for img in batch["image"]]}
        if with_labels and "label" in batch:
            out["labels"] = batch["label"]
        return out

    return apply
