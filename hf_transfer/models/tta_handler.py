"""Inference Endpoints custom handler for a model written by ``hf-transfer tta --handler``: it keeps adapting online.

Copied as ``handler.py`` into the folder. The Endpoints toolkit builds ``EndpointHandler(repo_dir)`` once, then calls
``handler({"inputs": image or [images], "parameters": {"top_k": k}})`` per request. A request of two or more images is
a test batch: it is predicted with the batch's BatchNorm statistics, then one entropy-minimisation step (TENT's)
updates the normalisation layers' affine parameters (SGD at the run's learning rate, ``hf_transfer_tta.json``), so
**the served model changes with its inputs**, and later requests see the adapted model. A single image is predicted
as the model stands (eval mode), without an update. The weights on disk never change; a restart starts over.

Stock libraries only (torch, transformers, Pillow; timm for timm models): the serving container does not have
hf_transfer. Works with transformers 4.51.3 (the toolkit's pin) and newer.
"""

from __future__ import annotations

import base64
import io
import json
import os
from typing import Any

import torch
from PIL import Image

TTA_INFO = "hf_transfer_tta.json"
_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)


class EndpointHandler:
    """What the Endpoints toolkit calls: built once from the repo folder, then called once per request."""

    def __init__(self, path: str = "") -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        with open(os.path.join(path, TTA_INFO)) as f:
            info = json.load(f)
        self.model = AutoModelForImageClassification.from_pretrained(path).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model.requires_grad_(False)
        params = []
        for module in self.model.modules():
            if isinstance(module, _NORMS):
                params += [p for n, p in module.named_parameters(recurse=False) if n in ("weight", "bias")]
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.SGD(params, lr=float(info["learning_rate"]), momentum=0.9)
        id2label = self.model.config.id2label
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.updates = 0

    @staticmethod
    def _image(inputs: Image.Image | bytes | str) -> Image.Image:
        if isinstance(inputs, Image.Image):
            return inputs.convert("RGB")
        if isinstance(inputs, str):  # base64 (the JSON form of a request) or a local path
            inputs = open(inputs, "rb").read() if os.path.isfile(inputs) else base64.b64decode(inputs)
        return Image.open(io.BytesIO(bytes(inputs))).convert("RGB")

    def _batchnorm(self, train: bool) -> None:
        for module in self.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.train(train)

    def __call__(self, data: dict[str, Any] | Image.Image | bytes | str) -> list[Any]:
        """``[{"label", "score"}, ...]`` for one image; one such list per image for several (which adapt the model)."""
        data = dict(data) if isinstance(data, dict) else {"inputs": data}
        raw = data.pop("inputs", data)
        many = isinstance(raw, (list, tuple))
        images = [self._image(x) for x in (raw if many else [raw])]
        top_k = int((data.get("parameters") or {}).get("top_k") or 5)
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        if len(images) >= 2:
            self._batchnorm(True)
            logits = self.model(pixel_values=pixel_values).logits
            entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
            entropy.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._batchnorm(False)
            self.updates += 1
            logits = logits.detach()
        else:
            with torch.no_grad():
                logits = self.model(pixel_values=pixel_values).logits
        out = []
        for probs in logits.softmax(-1):
            order = probs.argsort(descending=True)[: min(top_k, len(self.labels))]
            out.append([{"label": self.labels[i], "score": float(probs[i])} for i in order.tolist()])
        return out if many else out[0]
