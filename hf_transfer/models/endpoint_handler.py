"""Inference Endpoints custom handler for a LoRA adapter repo published by hf-transfer (``--publish adapter``).

Copied as ``handler.py`` into the adapter folder. The Endpoints toolkit imports it and calls
``EndpointHandler(repo_dir)`` once, then ``handler({"inputs": image, "parameters": {...}})`` per request.
Why it exists: stock transformers builds an adapter's model from the *base's* config, so when the base's
labels differ from the run's (an ImageNet base, a 3-class task) the default handler cannot load the head.
This handler builds the base with the run's labels (from ``hf_transfer_adapter.json``), loads the adapter
with peft and preprocesses with the folder's own ``preprocessor_config.json``.

Stock libraries only (torch, transformers, peft, Pillow; timm for timm bases): the serving container does
not have hf_transfer. Works with transformers 4.51.3 / peft 0.15.1 (the toolkit's pins) and newer.
"""

from __future__ import annotations

import base64
import io
import json
import os
from typing import Any

import torch
from PIL import Image

ADAPTER_INFO = "hf_transfer_adapter.json"


class EndpointHandler:
    """What the Endpoints toolkit calls: built once from the repo folder, then called once per request."""

    def __init__(self, path: str = "") -> None:
        import transformers
        from peft import PeftModel
        from transformers import AutoModelForImageClassification

        with open(os.path.join(path, ADAPTER_INFO)) as f:
            info = json.load(f)
        labels = list(info["label_names"])
        kwargs: dict[str, Any] = {}
        if info["stock_loading"]["needs_label_kwargs"]:
            kwargs = dict(
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)},
                ignore_mismatched_sizes=True,
            )
        base = AutoModelForImageClassification.from_pretrained(
            info["base_model_name_or_path"], revision=info.get("base_revision"), **kwargs
        )
        self.model = PeftModel.from_pretrained(base, path).eval()
        processor = info["stock_loading"]["processor"] or {"class": "AutoImageProcessor", "kwargs": {}}
        self.processor = getattr(transformers, processor["class"]).from_pretrained(path, **processor["kwargs"])
        self.labels = labels

    @staticmethod
    def _image(inputs: Image.Image | bytes | str) -> Image.Image:
        if isinstance(inputs, Image.Image):
            return inputs.convert("RGB")
        if isinstance(inputs, str):  # base64 (the JSON form of a request) or a local path
            inputs = open(inputs, "rb").read() if os.path.isfile(inputs) else base64.b64decode(inputs)
        return Image.open(io.BytesIO(bytes(inputs))).convert("RGB")

    def __call__(self, data: dict[str, Any] | Image.Image | bytes | str) -> list[dict[str, Any]]:
        """``{"inputs": PIL image | bytes | base64 str, "parameters": {"top_k": k}}`` ->
        ``[{"label", "score"}, ...]`` sorted by score (top 5 by default, as the image-classification pipeline)."""
        data = dict(data) if isinstance(data, dict) else {"inputs": data}
        image = self._image(data.pop("inputs", data))
        top_k = int((data.get("parameters") or {}).get("top_k") or 5)
        pixel_values = self.processor(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            probs = self.model(pixel_values=pixel_values).logits.softmax(-1)[0]
        order = probs.argsort(descending=True)[: min(top_k, len(self.labels))]
        return [{"label": self.labels[i], "score": float(probs[i])} for i in order.tolist()]
