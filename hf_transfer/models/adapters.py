"""LoRA adapters through PEFT, and adapter folders that load anywhere with one call.

Target modules are chosen per architecture (first rule that matches, head excluded), overridable:

1. separate attention projections ``q_proj``/``v_proj`` (transformers 5.x ViT, DeiT, DINOv2, ...;
   ``query``/``value`` in Swin V2, MobileViT, YOLOS): LoRA on q and v, as in the LoRA paper;
2. a fused ``qkv`` projection (timm ViT/DeiT/EVA/Swin): ``qkv`` and the attention output ``attn.proj``;
3. ConvNeXt-like nets (depthwise convolutions + pointwise MLP linears: timm ``mlp.fc1/fc2``,
   transformers ``pwconv1/pwconv2``): those linears;
4. other convolutional nets (ResNet, ...): every convolution with ``groups == 1``;
5. anything else: every ``nn.Linear`` of the body.

The new classification head is always trained and saved with the adapter (``modules_to_save``).
BatchNorm statistics are not part of an adapter, so the task mode keeps BatchNorm layers in eval
mode (their parameters are frozen): the published adapter reproduces the trained model exactly.

What a LoRA run publishes (``--publish``, :func:`export_lora`):

- ``both`` (default): the folder root is the MERGED full model (exactly what
  :func:`~hf_transfer.models.export.export_model` writes: ``config.json`` with this run's labels,
  ``model.safetensors``, ``preprocessor_config.json``), so ``pipeline(model=repo)``,
  ``AutoModelForImageClassification.from_pretrained(repo)`` and an Inference Endpoint's default handler
  serve it with no arguments; the adapter lies in ``adapter/`` (loaded with
  ``PeftModel.from_pretrained(base, repo, subfolder="adapter")``);
- ``merged``: only the merged full model;
- ``adapter``: the adapter at the root, plus ``handler.py`` + ``requirements.txt`` (the Endpoints'
  custom-handler convention, :mod:`hf_transfer.models.endpoint_handler`) so that an Endpoint serves it.

An adapter folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` (LoRA weights and the
head), ``preprocessor_config.json`` (this run's preprocessing) and ``hf_transfer_adapter.json`` (label
names, base, targets, and how stock loaders load it).

Why the loading recipe is recorded: an adapter folder must not hold ``config.json`` (transformers would
then take it for a full model), so stock transformers reads the config and image processor of the
*base* (``base_model_name_or_path``) - for a Hub adapter always, whatever the adapter repo holds. When
the base's labels are the run's (``self_sufficient``), the one-call loaders need nothing else. When they
differ (an ImageNet base, say), the base's head has the wrong size and names, and no file in the adapter
repo can change that; the stock loaders then need the label keyword arguments of :func:`label_kwargs`
(``num_labels``, ``id2label``, ``label2id``, ``ignore_mismatched_sizes``; ``stock_loading.needs_label_kwargs``
says so), built from ``label_names``, which make ``AutoModelForImageClassification.from_pretrained(repo, **kw)``,
``PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base, **kw), repo)`` and
``pipeline(..., model=repo, model_kwargs=kw)`` give the trained logits and the real names (tested). The
model card prints that code; :func:`load_adapter_model` does it in one call. Nothing that serves repos
passes such arguments, which is why the default publishes the merged model at the root.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Literal, overload

from torch import nn

from hf_transfer.errors import TransferConfigError
from hf_transfer.models.backbones import Backbone

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

ADAPTER_INFO = "hf_transfer_adapter.json"
ADAPTER_SUBDIR = "adapter"  # where --publish both puts the adapter, beside the merged model at the root
PUBLISH_FORMS = ("both", "merged", "adapter")
HANDLER_FILE = "handler.py"  # the Inference Endpoints' custom-handler convention
REQUIREMENTS_FILE = "requirements.txt"


class NotPortableWarning(UserWarning):
    """The adapter records a local base path: it loads on this machine only."""


# --- target modules ----------------------------------------------------------------------------


def _body_modules(model: nn.Module, head_name: str) -> list[tuple[str, nn.Module]]:
    head_prefix = head_name + "."
    return [(n, m) for n, m in model.named_modules() if n and n != head_name and not n.startswith(head_prefix)]


def default_target_modules(model: nn.Module, head_name: str) -> tuple[list[str], str]:
    """The automatic LoRA targets of ``model``: (full module names, the rule that chose them).

    The rules are the module docstring's."""
    modules = _body_modules(model, head_name)
    linear = [n for n, m in modules if isinstance(m, nn.Linear)]
    convs = [n for n, m in modules if isinstance(m, nn.Conv2d) and m.groups == 1]
    last = lambda n: n.rsplit(".", 1)[-1]  # noqa: E731
    qv = [n for n in linear if last(n) in ("q_proj", "v_proj")] or [n for n in linear if last(n) in ("query", "value")]
    if qv:
        return qv, "attention query/value projections"
    qkv = [n for n in linear if last(n) == "qkv"]
    if qkv:
        return qkv + [n for n in linear if n.endswith("attn.proj")], "fused qkv + attention output projection"
    depthwise = any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for _, m in modules)
    mlp = [n for n in linear if last(n) in ("pwconv1", "pwconv2", "fc1", "fc2")]
    if depthwise and mlp:
        return mlp, "pointwise MLP linears of a ConvNeXt-like net"
    if convs:
        return convs, "every ungrouped convolution"
    if linear:
        return linear, "every linear layer of the body"
    raise TransferConfigError(f"LoRA: found no Linear or Conv2d layer outside the head in {type(model).__name__}.")


def resolve_target_modules(model: nn.Module, head_name: str, spec: str | list[str] | None) -> tuple[list[str], str]:
    """The LoRA target modules: the automatic choice, or those ``spec`` names, each of which must match.

    ``spec``: comma-separated module names or name suffixes (``qkv,proj``), or ``re:<regex>`` matched (fullmatch)
    against module names."""
    if not spec:
        return default_target_modules(model, head_name)
    modules = _body_modules(model, head_name)
    supported = [n for n, m in modules if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d, nn.Embedding))]
    items = (
        [spec]
        if isinstance(spec, str) and spec.startswith("re:")
        else ([s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec))
    )
    out: list[str] = []
    for item in items:
        if item.startswith("re:"):
            rx = re.compile(item[3:])
            hits = [n for n in supported if rx.fullmatch(n) or rx.fullmatch(n.removeprefix("timm_model."))]
        else:
            hits = [n for n in supported if n == item or n.endswith("." + item)]
        if not hits:
            raise TransferConfigError(
                f"lora_target_modules: {item!r} matches no Linear/Conv layer outside the head "
                f"(examples: {supported[:4]})."
            )
        out.extend(hits)
    return list(dict.fromkeys(out)), f"user: {spec}"


# --- wrapping ----------------------------------------------------------------------------------


def base_reference(backbone: Backbone) -> tuple[str, bool]:
    """What ``base_model_name_or_path`` records for ``backbone``, and whether it loads on another machine."""
    if backbone.base_model_id:
        return backbone.base_model_id, True
    if os.path.isdir(backbone.model_id):
        return os.path.abspath(backbone.model_id), False
    raise TransferConfigError(
        f"LoRA needs pretrained base weights that a loader can find again (a Hub id or a local folder); "
        f"{backbone.model_id!r} is a random-init architecture."
    )


def apply_lora(
    backbone: Backbone,
    r: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str | list[str] | None = None,
) -> PeftModel:
    """Inject LoRA into ``backbone.model`` in place; returns the ``PeftModel`` (for saving)."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise TransferConfigError(f"lora_r={r}: must be >= 1.")
    base, _ = base_reference(backbone)
    targets, rule = resolve_target_modules(backbone.model, backbone.head_name, target_modules)
    config = LoraConfig(
        r=int(r),
        # peft annotates an int; it only ever divides it by r, and a fractional alpha is a valid scale
        lora_alpha=float(alpha if alpha is not None else r),  # type: ignore[arg-type]
        lora_dropout=float(dropout),
        target_modules=targets,
        modules_to_save=[backbone.head_name],
        bias="none",
        base_model_name_or_path=base,
        revision=backbone.revision,
    )
    peft_model = get_peft_model(backbone.model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base
    # a plain attribute: nn.Module's __setattr__ is typed for tensors and modules only
    peft_model.hf_transfer_rule = rule  # type: ignore[assignment]
    return peft_model


def trainable_parameter_count(model: nn.Module) -> int:
    """How many parameter elements train: what LoRA saves over a full fine-tune, for the card."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- portability -------------------------------------------------------------------------------


@overload
def load_adapter_model(folder: str, merge: Literal[True], subfolder: str | None = None) -> PreTrainedModel: ...


@overload
def load_adapter_model(folder: str, merge: Literal[False] = False, subfolder: str | None = None) -> PeftModel: ...


def load_adapter_model(folder: str, merge: bool = False, subfolder: str | None = None) -> PreTrainedModel | PeftModel:
    """Load any adapter folder written here in one call, also when the base's labels differ.

    ``subfolder``: ``adapter`` for ``--publish both``. The base is built with the adapter's labels (head size and
    names), then the adapter is loaded onto it the way the model card says (``PeftModel.from_pretrained``)."""
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    with open(os.path.join(folder, subfolder or "", ADAPTER_INFO)) as f:
        info = json.load(f)
    base = AutoModelForImageClassification.from_pretrained(
        info["base_model_name_or_path"], revision=info.get("base_revision"), **label_kwargs(info["label_names"])
    )
    if base.config.model_type == "timm_wrapper":
        base.config.label_names = list(info["label_names"])
    if subfolder:
        model = PeftModel.from_pretrained(base, folder, subfolder=subfolder)
    else:
        model = PeftModel.from_pretrained(base, folder)
    return model.merge_and_unload() if merge else model


def stock_loading(info: dict[str, Any]) -> dict[str, Any]:
    """How stock loaders load an adapter, from its ``hf_transfer_adapter.json`` info.

    The keys: ``needs_label_kwargs`` and ``processor`` (the image processor class and its ``from_pretrained``
    kwargs)."""
    return info["stock_loading"]


def stock_pipeline_kwargs(folder: str) -> dict[str, Any]:
    """The arguments that make ``pipeline("image-classification", model=folder, **kwargs)`` reproduce the run.

    Stock transformers only: the model card prints the same code."""
    import transformers

    with open(os.path.join(folder, ADAPTER_INFO)) as f:
        info = json.load(f)
    loading = stock_loading(info)
    out: dict[str, Any] = {}
    if loading["processor"]:
        proc = loading["processor"]
        out["image_processor"] = getattr(transformers, proc["class"]).from_pretrained(folder, **proc["kwargs"])
    if loading["needs_label_kwargs"]:
        out["model_kwargs"] = label_kwargs(info["label_names"])
    return out


def label_kwargs(label_names: list[str]) -> dict[str, Any]:
    """Keyword arguments that give a base model this run's head size and class names."""
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
        "ignore_mismatched_sizes": True,
    }


def peft_floor() -> str:
    """The oldest peft the handler is tested with (the Endpoints toolkit's pin)."""
    return "0.15.1"


def peft_version() -> str:
    """The installed peft's version, recorded with the adapter."""
    import peft

    return peft.__version__
