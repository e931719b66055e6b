"""Logits of a classifier on a dataset through training's eval input path (decoded uint8 cache + the
Trainer's on-device normalisation, or the stock PIL eval transform), batched, with a progress bar."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hf_transfer.models.backbones import Backbone


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device`` (``auto``: CUDA when present), refused before any work when unusable."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise TransferConfigError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TransferConfigError(f"--device {name!r}: CUDA is not available here; use --device cpu or auto.")
    return device


def predict_logits(
    backbone: Backbone,
    ds: Any,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    input_path: str = "fast",
    decoded_cache_dir: str | None = None,
    num_workers: int = 0,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, C] float32, labels [N])`` of ``backbone`` on ``ds`` through training's eval path."""
    import torch
    from tqdm.auto import tqdm

    from hf_transfer.data.augment import BatchAugment
    from hf_transfer.data.decoded import DecodedImages, collate_decoded
    from hf_transfer.data.paired import ImageDomainDataset, collate_images
    from hf_transfer.data.transforms import eval_transform

    device = device or torch.device("cpu")
    cfg = backbone.data_config
    items: torch.utils.data.Dataset
    to_input: BatchAugment | None
    if input_path == "fast":
        items = DecodedImages(ds, cfg, "eval", cache_dir=decoded_cache_dir, num_workers=num_workers, progress=progress)
        collate, to_input = collate_decoded, BatchAugment(cfg, "none").eval().to(device)
    else:
        items, collate, to_input = ImageDomainDataset(ds, eval_transform(cfg)), collate_images, None
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    # transformers decorates PreTrainedModel.to with functools.wraps(nn.Module.to), which typeshed types as the
    # unbound function (self first): the call is right, its annotation is not
    model = backbone.model.to(device).eval()  # type: ignore[arg-type]
    logits, labels = [], []
    with torch.inference_mode():
        for batch in tqdm(
            loader, desc="evaluating", unit="batch", disable=(not progress) if progress is not None else None
        ):
            pixels = batch["pixel_values"].to(device)
            if to_input is not None:
                pixels = to_input(pixels)
            logits.append(model(pixel_values=pixels).logits.float().cpu())
            labels.append(batch["labels"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
