"""The exported folder's example images: a few labelled target test images (the card's widget examples) and the
trained model's predictions on them (``reference_predictions.json``), so that a later round-trip check can prove
the exported folder predicts the same."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from datasets import Dataset

    from hf_transfer.models.backbones import Backbone

EXAMPLES_DIR = "examples"
REFERENCE_PREDICTIONS = "reference_predictions.json"


def example_file_name(index: int, label: str) -> str:
    """The file name ``examples/<index>_<label>.png``, with the label reduced to ``[A-Za-z0-9_-]``.

    A label is data, and ``a/b``, ``..`` or ``c:\\d`` must never become a path (the index keeps the names unique)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(label)).strip("_")[:64]
    return f"{EXAMPLES_DIR}/{index}_{stem or 'label'}.png"


@torch.no_grad()
def write_reference_predictions(
    backbone: Backbone, target_test: Dataset, output_dir: str, k: int = 4
) -> list[dict[str, Any]]:
    """Write a few labelled target test images and the trained model's predictions on them.

    The images are the card's widget examples; the predictions let a later round-trip check prove that the
    exported folder predicts the same."""
    from PIL import Image

    from hf_transfer.data.images import to_rgb
    from hf_transfer.data.transforms import eval_transform

    model = backbone.model.eval()
    device = next(model.parameters()).device
    transform = eval_transform(backbone.data_config)
    os.makedirs(os.path.join(output_dir, EXAMPLES_DIR), exist_ok=True)
    label_feature = target_test.features["label"]
    labelled = [i for i, y in enumerate(target_test["label"]) if y is not None and y >= 0][:k]
    rows: list[dict[str, Any]] = []
    for i in labelled:
        item = target_test[i]
        image = to_rgb(item["image"])
        label = label_feature.int2str(item["label"])
        name = example_file_name(len(rows), label)
        Image.Image.save(image, os.path.join(output_dir, name))
        reloaded = Image.open(os.path.join(output_dir, name)).convert("RGB")  # predict on the saved bytes
        probs = model(pixel_values=transform(reloaded)[None].to(device)).logits.softmax(-1)[0].cpu()
        rows.append(
            {"file": name, "label": label, "scores": {backbone.label_names[j]: float(p) for j, p in enumerate(probs)}}
        )
    with open(os.path.join(output_dir, REFERENCE_PREDICTIONS), "w") as f:
        json.dump(rows, f, indent=2)
    return rows
