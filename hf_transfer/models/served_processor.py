"""The image processor an exported transformers model is served with, checked to give training's eval pixels.

A timm backbone is exported with ``TimmWrapperImageProcessor``, which runs timm's own eval transform from the
``pretrained_cfg`` we write (``crop_mode`` included): the same geometry as
:func:`hf_transfer.data.transforms.eval_geometry`. A transformers backbone keeps its own processor class, and
those differ: ViT's resizes to height x width (a squash), ConvNeXt's divides ``shortest_edge`` by its own
``crop_pct``. So :func:`served_processor` tries the few ways a processor can express the eval recipe and keeps
the first whose output on two non-square probe images equals :func:`~hf_transfer.data.transforms.eval_transform`
(within :data:`TOLERANCE`, the resampling filters' rounding); none is an error naming the backbone. The run
calls it before training (:func:`hf_transfer.training.run.prepare_run`), the export writes what it returns.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_transfer.data.transforms import DataConfig, eval_transform
from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    from PIL import Image
    from transformers import BaseImageProcessor

#: largest difference (normalised units) between served and eval tensors taken as equal: a few grey levels of
#: the resampling filters (measured 0.008 for ViT's processor); a geometry mismatch gives 0.3 and more
TOLERANCE = 0.05


def probe_images() -> list[Image.Image]:
    """Two non-square smooth pictures (wide and tall) on which crop, squash and scale differences all show."""
    from PIL import Image

    out = []
    for h, w in ((40, 64), (70, 30)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        arr = np.stack([255 * xx / (w - 1), 255 * yy / (h - 1), 127 + 100 * np.sin(xx / 9 + yy / 13)], -1)
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def served_difference(processor: BaseImageProcessor, cfg: DataConfig) -> float:
    """Largest difference between ``processor``'s pixels and the eval transform's, on :func:`probe_images`."""
    import torch

    worst = 0.0
    for img in probe_images():
        served = processor(img, return_tensors="pt")["pixel_values"][0].float()
        expected = eval_transform(cfg)(img)
        if served.shape != expected.shape:
            return math.inf
        worst = max(worst, float(torch.max(torch.abs(served - expected))))
    return worst


def _settings(cfg: DataConfig) -> list[dict[str, Any]]:
    """Processor attributes that express ``cfg``'s eval recipe, most common first."""
    size, scale = cfg.size, int(math.floor(cfg.size / cfg.crop_pct))
    crop = {"do_center_crop": True, "crop_size": {"height": size, "width": size}}
    if cfg.crop_mode == "squash":
        return [{"size": {"height": scale, "width": scale}, **crop}]
    return [
        {"size": {"shortest_edge": scale}, **crop},
        {"size": {"shortest_edge": size}, "crop_pct": cfg.crop_pct, **crop},  # ConvNeXt: resizes to size / crop_pct
    ]


def served_processor(model_id: str, revision: str | None, cfg: DataConfig) -> BaseImageProcessor:
    """``model_id``'s image processor set to give ``cfg``'s eval pixels (module doc); an error when none does."""
    from transformers import AutoImageProcessor, ViTImageProcessor

    if cfg.crop_mode == "border":
        raise TransferConfigError(
            f"Backbone {model_id!r}: crop_mode='border' (pad to the mean colour) cannot be written into a "
            "transformers image processor, so the exported model would be served other pixels than it was "
            "evaluated on."
        )
    try:
        base = AutoImageProcessor.from_pretrained(model_id.removeprefix("hf-hub:"), revision=revision)
    except (OSError, ValueError):
        base = ViTImageProcessor()
    tried: list[str] = []
    for setting in _settings(cfg):
        processor = base.__class__.from_dict({**base.to_dict(), **setting})
        processor.image_mean, processor.image_std = list(cfg.mean), list(cfg.std)
        difference = served_difference(processor, cfg)
        if difference <= TOLERANCE:
            return processor
        tried.append(f"{setting['size']}: {difference:.3f}")
    raise TransferConfigError(
        f"Backbone {model_id!r}: its image processor ({type(base).__name__}) cannot be set to give the pixels the "
        f"model is evaluated on (crop_mode={cfg.crop_mode!r}, size {cfg.size}, crop_pct {cfg.crop_pct}); largest "
        f"differences tried: {'; '.join(tried)}. A served model would see other pixels than the card's accuracy."
    )
