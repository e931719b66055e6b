"""Publishing a LoRA run: the adapter folder, the merged model beside it, the Endpoints handler.

What each ``--publish`` form holds, and why an adapter folder records how stock loaders load it, is in
:mod:`hf_transfer.models.adapters` (which applies LoRA and loads adapter folders back); this module writes them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.models.adapters import (
    ADAPTER_INFO,
    ADAPTER_SUBDIR,
    HANDLER_FILE,
    PUBLISH_FORMS,
    REQUIREMENTS_FILE,
    NotPortableWarning,
    base_reference,
    peft_floor,
    peft_version,
    trainable_parameter_count,
)
from hf_transfer.models.backbones import Backbone, _data_config_from_processor, _data_config_from_timm_cfg
from hf_transfer.runtime.cache import staged_files
from hf_transfer.runtime.disk import tensors_bytes

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)


def _same_data_config(a: DataConfig, b: DataConfig) -> bool:
    return (
        tuple(a.input_size) == tuple(b.input_size)
        and abs(a.crop_pct - b.crop_pct) < 1e-6
        and all(abs(x - y) < 1e-6 for x, y in zip(a.mean + a.std, b.mean + b.std, strict=True))
        and a.interpolation == b.interpolation
    )


def portability_report(backbone: Backbone, base: str) -> dict[str, Any]:
    """Does a stock loader, which reads config and image processor from ``base``, reproduce this run?"""
    from transformers import AutoConfig, TimmWrapperConfig

    reasons = []
    try:
        config = AutoConfig.from_pretrained(base, revision=backbone.revision)
    except Exception as err:  # offline without a cached base, ...
        return {"self_sufficient": None, "reasons": [f"could not read the base config: {type(err).__name__}"]}
    base_labels = [config.id2label[i] for i in range(len(config.id2label))]
    if base_labels != backbone.label_names:
        reasons.append(
            f"the base's labels ({len(base_labels)}: {base_labels[:4]}...) differ from the adapter's "
            f"({len(backbone.label_names)}: {backbone.label_names[:4]}...)"
        )
    if isinstance(config, TimmWrapperConfig):
        base_cfg = _data_config_from_timm_cfg(getattr(config, "pretrained_cfg", None) or {})
    else:
        base_cfg = _data_config_from_processor(base, backbone.revision, config, False)
    if not _same_data_config(base_cfg, backbone.data_config):
        reasons.append(
            f"the base's preprocessing {base_cfg.to_dict()} differs from the run's {backbone.data_config.to_dict()}"
        )
    return {"self_sufficient": not reasons, "reasons": reasons}


# --- export ------------------------------------------------------------------------------------


def _save_processor(backbone: Backbone, folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Write this run's preprocessing; returns how a stock loader reads it back (class + kwargs)."""
    from hf_transfer.models.export import _timm_pretrained_cfg

    cfg = backbone.data_config
    if backbone.library == "timm":
        # TimmWrapperImageProcessor reads config.json by default (which an adapter folder must not have)
        # and rebuilds itself from ``pretrained_cfg``: write that into preprocessor_config.json.
        processor = {
            "image_processor_type": "TimmWrapperImageProcessor",
            "architecture": backbone.model.config.architecture,
            "pretrained_cfg": _timm_pretrained_cfg(backbone),
        }
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
            json.dump(processor, f, indent=2)
        return {
            "class": "TimmWrapperImageProcessor",
            "kwargs": {"image_processor_filename": "preprocessor_config.json"},
        }
    from transformers import ViTImageProcessor

    ViTImageProcessor(
        size={"height": cfg.size, "width": cfg.size}, image_mean=list(cfg.mean), image_std=list(cfg.std)
    ).save_pretrained(folder)
    return {"class": "AutoImageProcessor", "kwargs": {}}


def merged_backbone(backbone: Backbone, peft_model: PeftModel) -> Backbone:
    """A plain model with the LoRA weights merged in and the trained head (a copy; training state untouched)."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.config.id2label = dict(enumerate(backbone.label_names))
    merged.config.label2id = {n: i for i, n in enumerate(backbone.label_names)}
    return Backbone(
        model=merged,
        model_id=backbone.model_id,
        library=backbone.library,
        data_config=backbone.data_config,
        pretrained=backbone.pretrained,
        revision=backbone.revision,
    )


def adapter_info(peft_model: PeftModel, backbone: Backbone) -> dict[str, Any]:
    """What ``hf_transfer_adapter.json`` records: base, labels, targets, portability.

    Warns when the base is a local folder, and sets the adapter config's base to :func:`base_reference`."""
    base, portable = base_reference(backbone)
    if not portable:
        warnings.warn(
            f"The adapter's base is the local folder {base}: the adapter loads only where that folder "
            "exists. Use a Hub id as backbone for a portable adapter.",
            NotPortableWarning,
            stacklevel=3,
        )
    peft_model.peft_config["default"].base_model_name_or_path = base
    report = portability_report(backbone, base)
    from peft import LoraConfig

    cfg = peft_model.peft_config["default"]
    if not isinstance(cfg, LoraConfig):
        raise TypeError(f"adapter_info: a LoRA adapter was expected, got {type(cfg).__name__}.")
    # apply_lora passes a list; peft's field also takes one regex string
    targets = [cfg.target_modules] if isinstance(cfg.target_modules, str) else list(cfg.target_modules or [])
    return {
        "base_model_name_or_path": base,
        "base_revision": backbone.revision,
        "portable": portable,
        **report,
        "label_names": backbone.label_names,
        "library": backbone.library,
        "head": backbone.head_name,
        "target_modules": sorted(targets),
        "target_rule": getattr(peft_model, "hf_transfer_rule", None),
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "data_config": backbone.data_config.to_dict(),
        "trainable_parameters": trainable_parameter_count(peft_model),
        "peft_version": peft_version(),
    }


def export_adapter(
    peft_model: PeftModel,
    backbone: Backbone,
    output_dir: str,
    results: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the adapter folder (with ``results.json`` unless ``results`` is None); returns the adapter info."""
    from hf_transfer.models.export import EXPORT_OVERHEAD_BYTES, RESULTS_FILE

    info = dict(info or adapter_info(peft_model, backbone))
    if info["self_sufficient"] is False:
        # at the root of a published repo (--publish adapter) this is what a user meets first
        log = logger.warning if info.get("subfolder") is None else logger.info
        log(
            "Adapter in %s: stock loaders read config and preprocessing from the base %s, and %s. "
            "Load it with the keyword arguments recorded in %s (stock_loading; the model card shows the code); "
            "an Inference Endpoint serves it through handler.py, pipeline(model=repo) without them fails.",
            output_dir,
            info["base_model_name_or_path"],
            "; ".join(info["reasons"]),
            ADAPTER_INFO,
        )
    os.makedirs(output_dir, exist_ok=True)
    saved = [p for p in peft_model.parameters() if p.requires_grad]  # the adapter and the modules it saves
    with staged_files(output_dir, tensors_bytes(saved) + EXPORT_OVERHEAD_BYTES) as staging:
        peft_model.save_pretrained(str(staging), safe_serialization=True)
        readme = os.path.join(staging, "README.md")
        if os.path.exists(readme):  # PEFT's boilerplate card; the project's cards module writes the real one
            os.remove(readme)
        labels_differ = any("labels" in r for r in info["reasons"]) or info["self_sufficient"] is None
        info["stock_loading"] = {"needs_label_kwargs": labels_differ, "processor": _save_processor(backbone, staging)}
        info["adapter_bytes"] = os.path.getsize(os.path.join(staging, "adapter_model.safetensors"))
        with open(os.path.join(staging, ADAPTER_INFO), "w") as f:
            json.dump(info, f, indent=2)
        if results is not None:
            with open(os.path.join(staging, RESULTS_FILE), "w") as f:
                json.dump({**results, "adapter": info}, f, indent=2, sort_keys=True, default=str)
    return info


def write_endpoint_handler(output_dir: str, library: str) -> None:
    """Write ``handler.py`` and ``requirements.txt``: an Inference Endpoint then serves the adapter with its labels.

    The handler is :mod:`hf_transfer.models.endpoint_handler` (stock libraries only)."""
    from pathlib import Path

    source = Path(__file__).with_name("endpoint_handler.py").read_text(encoding="utf-8")
    with open(os.path.join(output_dir, HANDLER_FILE), "w", encoding="utf-8") as f:
        f.write(source)
    requirements = [f"peft>={peft_floor()}"] + (["timm"] if library == "timm" else [])
    with open(os.path.join(output_dir, REQUIREMENTS_FILE), "w") as f:
        f.write("\n".join(requirements) + "\n")


def export_lora(
    peft_model: PeftModel,
    backbone: Backbone,
    output_dir: str,
    results: dict[str, Any] | None = None,
    publish: str = "both",
) -> dict[str, Any]:
    """Write the published form ``publish`` (see the module docstring) into ``output_dir``.

    Returns the adapter info (``publish`` and ``subfolder`` say where the adapter is, None for ``merged``)."""
    from hf_transfer.models.export import export_model

    if publish not in PUBLISH_FORMS:
        raise TransferConfigError(f"publish={publish!r}: choose one of {PUBLISH_FORMS}.")
    info = adapter_info(peft_model, backbone)
    if publish == "adapter":
        info = {**info, "publish": publish, "subfolder": None}
        info = export_adapter(peft_model, backbone, output_dir, results=results or {}, info=info)
        write_endpoint_handler(output_dir, backbone.library)
        return info
    if publish == "both":
        info = export_adapter(
            peft_model,
            backbone,
            os.path.join(output_dir, ADAPTER_SUBDIR),
            info={**info, "publish": publish, "subfolder": ADAPTER_SUBDIR},
        )
    else:
        info = {**info, "publish": publish, "subfolder": None}
    export_model(merged_backbone(backbone, peft_model), output_dir, results={**(results or {}), "adapter": info})
    return info
