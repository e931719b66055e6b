"""Write a Hub-ready folder for a backbone + head.

The folder loads with ``AutoModelForImageClassification.from_pretrained``, with
``pipeline("image-classification")`` (real class names, not ``LABEL_i``) and, for timm backbones,
with ``timm.create_model("local-dir:<folder>", pretrained=True)``:

- timm: weights are saved with timm's own key names (no ``timm_model.`` prefix) because that is
  what timm reads and what transformers' TimmWrapper also accepts; ``config.json`` carries
  ``label_names`` and the data config as ``pretrained_cfg``, and ``model_args`` is never ``None``
  (timm's local-dir loader calls ``.get`` on it).
- transformers: ``save_pretrained`` plus the model's image processor set to the eval recipe it was trained
  and evaluated with, checked to give the same pixels (:mod:`hf_transfer.models.served_processor`).

Files are first written to a temporary folder beside the target, then moved in one by one, so a
failure never leaves a half-written export over a previous one. A disk without room for the weights is
refused before anything is written, and a full disk met while writing names the folder and the
megabytes (:func:`hf_transfer.runtime.cache.staged_files`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from safetensors.torch import save_file

from hf_transfer.models.backbones import Backbone, _timm_model
from hf_transfer.models.served_processor import served_processor
from hf_transfer.runtime.cache import staged_files
from hf_transfer.runtime.disk import tensors_bytes

RESULTS_FILE = "results.json"
#: room asked for besides the weights: configs, processor, results, headers
EXPORT_OVERHEAD_BYTES = 256 * 2**10


def _timm_pretrained_cfg(backbone: Backbone) -> dict[str, Any]:
    pcfg = dict(getattr(backbone.model.config, "pretrained_cfg", None) or {})
    cfg = backbone.data_config
    pcfg.update(
        input_size=list(cfg.input_size),
        mean=list(cfg.mean),
        std=list(cfg.std),
        interpolation=cfg.interpolation,
        crop_pct=cfg.crop_pct,
        crop_mode=cfg.crop_mode,
    )
    pcfg.pop("num_classes", None)
    return pcfg


def _save_timm(backbone: Backbone, folder: str | os.PathLike[str]) -> None:
    from transformers import TimmWrapperImageProcessor

    config = backbone.model.config
    config.label_names = backbone.label_names
    config.model_args = config.model_args or {}
    config.pretrained_cfg = _timm_pretrained_cfg(backbone)
    config.save_pretrained(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in _timm_model(backbone.model).state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    processor = TimmWrapperImageProcessor(pretrained_cfg=config.pretrained_cfg, architecture=config.architecture)
    path = os.path.join(folder, "preprocessor_config.json")
    processor.to_json_file(path)
    # transformers 5 writes only ``data_config``; transformers 4.x (4.51.3 in the Inference Endpoints container)
    # rebuilds the processor from ``pretrained_cfg`` and, for a Hub id, fails without it in this file
    with open(path) as f:
        saved = json.load(f)
    with open(path, "w") as f:
        json.dump({**saved, "pretrained_cfg": config.pretrained_cfg}, f, indent=2, sort_keys=True)


def _save_transformers(backbone: Backbone, folder: str | os.PathLike[str]) -> None:
    processor = served_processor(backbone.model_id, backbone.revision, backbone.data_config)  # checked first
    backbone.model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def export_model(
    backbone: Backbone, output_dir: str, results: dict | None = None, extra_files: dict[str, str] | None = None
) -> str:
    """Write weights, config (id2label/label2id), preprocessor config and ``results.json``."""
    os.makedirs(output_dir, exist_ok=True)
    nbytes = tensors_bytes(backbone.model.state_dict().values()) + EXPORT_OVERHEAD_BYTES
    with staged_files(output_dir, nbytes) as staging:
        if backbone.library == "timm":
            _save_timm(backbone, staging)
        else:
            _save_transformers(backbone, staging)
        with open(os.path.join(staging, RESULTS_FILE), "w") as f:
            json.dump(results or {}, f, indent=2, sort_keys=True, default=str)
        for name, content in (extra_files or {}).items():
            with open(os.path.join(staging, name), "w") as f:
                f.write(content)
    return output_dir
