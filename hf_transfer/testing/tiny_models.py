"""Tiny models that tests and offline benchmarks write as local "Hub" folders (nothing pretrained is reachable
offline)."""

from __future__ import annotations

from pathlib import Path


def convnext_folder(folder: str | Path, num_labels: int, hidden_sizes: tuple[int, int] = (8, 16)) -> str:
    """A random-init (seed 0) two-stage transformers-native ConvNeXt at 32 px with its image processor."""
    import torch
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=list(hidden_sizes), image_size=32)
    config.num_labels = num_labels  # not in the typed __init__; the setter makes the same id2label/label2id
    ConvNextForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    return str(folder)
