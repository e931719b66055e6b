"""One small transfer surface over timm and transformers image backbones.

Every backbone is held as a transformers ``PreTrainedModel`` for image classification (timm models
through transformers' ``TimmWrapperForImageClassification``), so the Trainer, ``save_pretrained``,
``pipeline("image-classification")`` and the Hub all see one kind of object. On top of it
:class:`Backbone` gives what transfer needs, in timm's spirit: pooled features (the input of the
final linear classifier, captured with a forward hook so it works for any architecture), the head,
named parameter groups (stem / stage_i / neck / head) and the pretrained data config.

Accepted ids:
- ``timm/<name>`` or ``hf-hub:timm/<name>``: timm weights on the Hub (through TimmWrapper);
- a plain timm architecture name (``resnet18``, ``test_resnet``): timm architecture, RANDOM init
  (nothing is downloaded; used by the offline built-in demo); ``timm:<name>`` forces this reading;
- any other Hub id or a local folder: ``AutoModelForImageClassification.from_pretrained``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from hf_transfer.data.transforms import DataConfig
from hf_transfer.errors import TransferConfigError
from hf_transfer.models.weights import raise_if_unreadable
from hf_transfer.runtime.logs import quiet_load_report

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

_STAGE = re.compile(r"(?:^|\.)(?:layers?|stages?|blocks?|block)\.(\d+)(?:\.|$)")
_STEM = re.compile(r"(?:^|\.)(?:embeddings?|embedder|patch_embed|stem|conv1|bn1|cls_token|pos_embed)(?:\.|$)")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A classification model plus what transfer learning needs to know about it."""

    model: PreTrainedModel
    model_id: str
    library: str  # "timm" | "transformers"
    data_config: DataConfig
    pretrained: bool = True
    revision: str | None = None
    #: the classifier's weights came from the checkpoint (its classes were kept): a real source head
    head_pretrained: bool = False
    head_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.head_name = _find_head_name(self.model)

    # --- the head -------------------------------------------------------------------------------
    @property
    def head(self) -> nn.Linear:
        """The final classifier (under LoRA, PEFT's wrapper around it, which reads as the same ``nn.Linear``)."""
        return cast(nn.Linear, self.model.get_submodule(self.head_name))

    @property
    def feature_dim(self) -> int:
        """The width of the pooled features, the head's input."""
        return self.head.in_features

    @property
    def num_labels(self) -> int:
        """The number of classes the head predicts."""
        return self.head.out_features

    @property
    def label_names(self) -> list[str]:
        """The class names in head order, as the config records them for the Hub."""
        id2label = {int(i): name for i, name in (self.model.config.id2label or {}).items()}
        return [id2label[i] for i in range(len(id2label))]

    @property
    def base_model_id(self) -> str | None:
        """The Hub id the weights came from (None for random init or a local folder)."""
        if not self.pretrained or os.path.isdir(self.model_id):
            return None
        return self.model_id.removeprefix("hf-hub:")

    # --- forward --------------------------------------------------------------------------------
    def features_and_logits(
        self,
        pixel_values: torch.Tensor,
        model: nn.Module | None = None,
        head_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass returning (pooled features, logits). ``model`` may be a DDP wrapper.

        ``head_input``: applied to the pooled features before the head; the features returned are its output."""
        captured: list[torch.Tensor] = []
        hooks = []
        if head_input is not None:
            hooks.append(self.head.register_forward_pre_hook(lambda _m, inp: (head_input(inp[0]), *inp[1:])))
        hooks.append(self.head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0])))
        try:
            logits = (model or self.model)(pixel_values=pixel_values).logits
        finally:
            for hook in hooks:
                hook.remove()
        return captured[0].flatten(1), logits

    # --- parameter groups -----------------------------------------------------------------------
    def param_groups(self) -> OrderedDict[str, list[tuple[str, nn.Parameter]]]:
        """Named groups in input-to-output order: ``stem``, ``stage_0`` .. ``stage_N``, [``neck``], ``head``."""
        head_prefix = self.head_name + "."
        named = list(self.model.named_parameters())
        head = [(n, p) for n, p in named if n.startswith(head_prefix)]
        body = [(n, p) for n, p in named if not n.startswith(head_prefix)]
        groups: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict()
        if self.library == "timm":
            groups.update(_timm_groups(_timm_model(self.model), body))
        else:
            groups.update(_name_pattern_groups(body))
        groups["head"] = head
        return OrderedDict((k, v) for k, v in groups.items() if v)


class _TimmModel(Protocol):
    """What this module asks of a timm model (every timm architecture has both methods)."""

    def get_classifier(self) -> nn.Module: ...

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]: ...


def _timm_model(model: nn.Module) -> nn.Module:
    """The timm model inside a ``TimmWrapperForImageClassification``."""
    return model.get_submodule("timm_model")


def _find_head_name(model: PreTrainedModel) -> str:
    """Dotted name of the final classifier ``nn.Linear`` (timm: get_classifier; HF: ``classifier``)."""
    if hasattr(model, "timm_model"):
        head = cast(_TimmModel, _timm_model(model)).get_classifier()
        for name, module in model.named_modules():
            if module is head:
                if isinstance(module, nn.Linear):
                    return name
        raise TransferConfigError(
            f"timm model {model.config.architecture!r}: its classifier is not a single nn.Linear; "
            "this architecture is not supported yet."
        )
    num_labels = getattr(model.config, "num_labels", None)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    named = [(n, m) for n, m in candidates if n.split(".")[0] in ("classifier", "head", "fc", "score")]
    pool = named or [(n, m) for n, m in candidates if m.out_features == num_labels]
    if not pool:
        raise TransferConfigError(
            f"Could not find the classification head (a final nn.Linear) of {type(model).__name__}."
        )
    return pool[-1][0]


def _timm_groups(
    timm_model: nn.Module, body: list[tuple[str, nn.Parameter]]
) -> OrderedDict[str, list[tuple[str, nn.Parameter]]]:
    from timm.models import group_parameters

    matcher = cast(_TimmModel, timm_model).group_matcher(coarse=True)
    by_id = group_parameters(timm_model, matcher)  # {group index: [param names]} in order
    order = {pname: idx for idx, (_gid, names) in enumerate(sorted(by_id.items())) for pname in names}
    n_groups = len(by_id)
    groups: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict()
    for name, param in body:
        idx = order.get(name.removeprefix("timm_model."), n_groups - 1)
        key = "stem" if idx == 0 else f"stage_{idx - 1}"
        groups.setdefault(key, []).append((name, param))
    return OrderedDict(sorted(groups.items(), key=lambda kv: _group_rank(kv[0])))


def _name_pattern_groups(
    body: list[tuple[str, nn.Parameter]],
) -> OrderedDict[str, list[tuple[str, nn.Parameter]]]:
    groups: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict()
    for name, param in body:
        stage = _STAGE.search(name)
        if stage:
            key = f"stage_{int(stage.group(1))}"
        elif _STEM.search(name):
            key = "stem"
        else:
            key = "neck"
        groups.setdefault(key, []).append((name, param))
    return OrderedDict(sorted(groups.items(), key=lambda kv: _group_rank(kv[0])))


def _group_rank(key: str) -> tuple[int, int]:
    if key == "stem":
        return (0, 0)
    if key.startswith("stage_"):
        return (1, int(key.split("_")[1]))
    return (2, 0) if key == "neck" else (3, 0)


# --- loading ------------------------------------------------------------------------------------


#: what a backbone id names (the accepted ids of the module doc)
LOCAL_FOLDER = "local folder"
RANDOM_INIT = "timm architecture, random init"
TIMM_ON_HUB = "timm weights on the Hub"
HUB_MODEL = "Hub model"
_HUB_MODEL_ID = re.compile(r"^(hf-hub:)?[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def backbone_kind(model_id: str) -> str:
    """What ``model_id`` names (one of the kinds above).

    The one reading of a backbone id, for loading and for the checks before any work alike. An id that names none of
    them is refused, saying why."""
    if os.path.isdir(model_id):
        return LOCAL_FOLDER
    if model_id.startswith("timm:") or "/" not in model_id:
        import timm

        arch = model_id.removeprefix("timm:")
        if not timm.list_models(arch):
            raise TransferConfigError(
                f"backbone {model_id!r}: Unknown timm architecture {arch!r} (see timm.list_models()), and not a Hub "
                "id (org/name) or a local folder."
            )
        return RANDOM_INIT
    if not _HUB_MODEL_ID.match(model_id):
        raise TransferConfigError(f"backbone {model_id!r}: not a valid Hub model id (org/name) or a local folder.")
    return TIMM_ON_HUB if model_id.removeprefix("hf-hub:").startswith("timm/") else HUB_MODEL


def check_backbone(model_id: str, revision: str | None = None) -> str:
    """The backbone's kind (:func:`backbone_kind`), once its weight files on this disk are checked readable.

    The files of a local folder, or Hub files already in the cache: a damaged one is named before any work."""
    kind = backbone_kind(model_id)
    if kind != RANDOM_INIT:
        raise_if_unreadable(model_id.removeprefix("hf-hub:"), revision)
    return kind


def _data_config_from_timm_cfg(pcfg: dict[str, Any]) -> DataConfig:
    return DataConfig(
        input_size=tuple(pcfg.get("input_size", (3, 224, 224))),
        mean=tuple(pcfg.get("mean", _IMAGENET_MEAN)),
        std=tuple(pcfg.get("std", _IMAGENET_STD)),
        interpolation=pcfg.get("interpolation", "bicubic"),
        crop_pct=float(pcfg.get("crop_pct", 0.875)),
        crop_mode=pcfg.get("crop_mode") or "center",  # timm reads None as center
    )


def _size_dict(size: int | dict[str, int] | Any | None) -> dict[str, int]:
    """A processor's size as a dict: transformers' processors hold a ``SizeDict``, custom ones a dict or an int."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    items = size.items() if hasattr(size, "items") else vars(size).items()
    return {k: v for k, v in items if v is not None}


def _log_load(model_id: str, num_labels: int, head_pretrained: bool, other_fresh: list[str]) -> None:
    """One line for the head we replace on purpose (instead of transformers' LOAD REPORT table); a warning naming
    any other weight the checkpoint did not provide, which would start from random init."""
    if not head_pretrained:
        logger.info("Backbone %s: a new %d-class head replaces the checkpoint's classifier.", model_id, num_labels)
    if other_fresh:
        shown = ", ".join(other_fresh[:8]) + (f" and {len(other_fresh) - 8} more" if len(other_fresh) > 8 else "")
        logger.warning(
            "Backbone %s: %d weight(s) outside the head were not in the checkpoint and start from random init: %s",
            model_id,
            len(other_fresh),
            shown,
        )


def _data_config_from_processor(
    model_id: str, revision: str | None, config: PretrainedConfig, trust_remote_code: bool
) -> DataConfig:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        logger.warning("No image processor for %s (%s); using ImageNet mean/std at %d px.", model_id, err, size)
        return DataConfig(input_size=(3, size, size), interpolation="bilinear")
    if hasattr(proc, "data_config"):  # a TimmWrapperImageProcessor
        return _data_config_from_timm_cfg(proc.data_config)
    crop = _size_dict(getattr(proc, "crop_size", None)) if getattr(proc, "do_center_crop", False) else {}
    resize = _size_dict(getattr(proc, "size", None))
    size = crop.get("height") or resize.get("height") or resize.get("shortest_edge") or 224
    crop_pct = getattr(proc, "crop_pct", None)
    if crop_pct is None:
        short = resize.get("shortest_edge") or resize.get("height")
        crop_pct = size / short if crop and short else 1.0
    resample = getattr(proc, "resample", 2)
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(resample) if resample is not None else 2, "bilinear")
    return DataConfig(
        input_size=(3, int(size), int(size)),
        mean=tuple(getattr(proc, "image_mean", None) or _IMAGENET_MEAN),
        std=tuple(getattr(proc, "image_std", None) or _IMAGENET_STD),
        interpolation=interp,
        crop_pct=float(crop_pct),
        # a processor that resizes to height x width (ViT's) squashes a non-square image: so must training's eval
        crop_mode="squash" if resize.get("height") and not resize.get("shortest_edge") else "center",
    )


def load_backbone(
    model_id: str,
    label_names: list[str],
    revision: str | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
    trust_remote_code: bool = False,
    drop_path: float | None = None,
) -> Backbone:
    """Load ``model_id`` with a fresh head for ``label_names`` (real names go into the config).

    ``drop_path``: the stochastic-depth rate the blocks train with (timm's ``drop_path_rate``, or the transformers
    config's); it is not kept in the exported config (inference never drops a path)."""
    from transformers import (
        AutoConfig,
        AutoModelForImageClassification,
        TimmWrapperConfig,
        TimmWrapperForImageClassification,
    )

    if not label_names:
        raise TransferConfigError("load_backbone needs at least one label name.")
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in enumerate(label_names)}

    if backbone_kind(model_id) == RANDOM_INIT:
        import timm

        arch = model_id.removeprefix("timm:")
        if not timm.list_models(arch):
            raise TransferConfigError(f"Unknown timm architecture {arch!r} (see timm.list_models()).")
        timm_cfg = timm.models.get_pretrained_cfg(arch)
        pcfg = dict(timm_cfg.to_dict() if timm_cfg else {})
        for key in ("url", "hf_hub_id", "hf_hub_filename", "tag", "num_classes", "license"):
            pcfg.pop(key, None)
        pcfg["architecture"] = arch
        # id2label also sets num_labels
        model_args = {} if drop_path is None else {"drop_path_rate": float(drop_path)}
        config = TimmWrapperConfig(architecture=arch, id2label=id2label, label2id=label2id, model_args=model_args)
        config.pretrained_cfg = pcfg
        model = TimmWrapperForImageClassification(config)
        library, pretrained, data_config = "timm", False, _data_config_from_timm_cfg(pcfg)
        head_pretrained = False
        logger.info("Backbone %s: timm architecture with random init (no download).", arch)
    else:
        hub_id = model_id.removeprefix("hf-hub:")
        try:
            config = AutoConfig.from_pretrained(hub_id, revision=revision, trust_remote_code=trust_remote_code)
        except Exception as err:
            raise TransferConfigError(
                f"Could not load backbone {model_id!r} (revision={revision!r}): {type(err).__name__}: {err}. "
                "Give a Hub id (org/name), a local folder with config.json, or a timm architecture name."
            ) from err
        if isinstance(config, TimmWrapperConfig):
            config.model_args = config.model_args or {}
            config.label_names = list(label_names)
        if drop_path is not None:
            set_drop_path(config, float(drop_path), model_id)
        config.id2label, config.label2id = id2label, label2id  # also sets num_labels
        with quiet_load_report():
            try:
                model, info = AutoModelForImageClassification.from_pretrained(
                    hub_id,
                    config=config,
                    revision=revision,
                    ignore_mismatched_sizes=True,
                    trust_remote_code=trust_remote_code,
                    use_safetensors=True,
                    output_loading_info=True,
                )
            except Exception as err:
                raise_if_unreadable(hub_id, revision, err)  # a damaged weight file: named
                raise
        head_prefix = _find_head_name(model) + "."
        fresh = set(info.get("missing_keys", ())) | {k[0] for k in info.get("mismatched_keys", ())}
        head_pretrained = not any(k.startswith(head_prefix) for k in fresh)
        other_fresh = sorted(k for k in fresh if not k.startswith(head_prefix))
        _log_load(model_id, len(label_names), head_pretrained, other_fresh)
        if isinstance(model, TimmWrapperForImageClassification):
            library, data_config = "timm", _data_config_from_timm_cfg(getattr(model.config, "pretrained_cfg", {}) or {})
        else:
            library = "transformers"
            data_config = _data_config_from_processor(hub_id, revision, model.config, trust_remote_code)
        pretrained = True
    model.config.id2label, model.config.label2id = id2label, label2id
    if drop_path is not None:  # the modules are built: the exported config keeps the backbone's own setting
        clear_drop_path(model.config)
    if library == "timm":
        model.config.label_names = list(label_names)
    if image_size is not None:
        data_config.input_size = (3, int(image_size), int(image_size))
    if crop_pct is not None:
        data_config.crop_pct = float(crop_pct)
    return Backbone(
        model=model,
        model_id=model_id,
        library=library,
        data_config=data_config,
        pretrained=pretrained,
        revision=revision,
        head_pretrained=head_pretrained,
    )


def checkpoint_label_names(model_id: str, revision: str | None = None, trust_remote_code: bool = False) -> list[str]:
    """The class names of ``model_id``'s own classifier (its source classes), read from its config only.

    Loading the backbone with exactly these names keeps its pretrained head (``Backbone.head_pretrained``
    then says whether the checkpoint really held one). A plain timm name (random init) has none: ``[]``."""
    from transformers import AutoConfig

    if backbone_kind(model_id) == RANDOM_INIT:
        return []
    try:
        config = AutoConfig.from_pretrained(
            model_id.removeprefix("hf-hub:"), revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as err:
        raise TransferConfigError(
            f"Could not load backbone {model_id!r} (revision={revision!r}): {type(err).__name__}: {err}. "
            "Give a Hub id (org/name), a local folder with config.json, or a timm architecture name."
        ) from err
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label)]


def set_drop_path(config: Any, rate: float, model_id: str) -> None:
    """Put the drop-path rate where the model reads it, or refuse a backbone without one, naming it."""
    from transformers import TimmWrapperConfig

    if isinstance(config, TimmWrapperConfig):
        config.model_args = {**(config.model_args or {}), "drop_path_rate": rate}
    elif hasattr(config, "drop_path_rate"):
        config.drop_path_rate = rate
    else:
        raise TransferConfigError(
            f"drop_path={rate}: backbone {model_id!r} ({type(config).__name__}) has no drop-path (stochastic depth) "
            "setting. Remove --drop_path, or pick a backbone that has one (timm models; transformers ConvNeXt, Swin, "
            "BEiT, DINOv2, ...)."
        )


def clear_drop_path(config: Any) -> None:
    """Take the training-only drop-path rate back out of a timm config (transformers configs keep theirs)."""
    model_args = getattr(config, "model_args", None)
    if isinstance(model_args, dict):
        model_args.pop("drop_path_rate", None)


def check_drop_path(model_id: str, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """Refuse ``--drop_path`` on a backbone without the setting, from its config alone (before any data loads)."""
    from transformers import AutoConfig

    if backbone_kind(model_id) == RANDOM_INIT:
        return  # every timm architecture takes drop_path_rate (unknown ones are refused when loading)
    config = AutoConfig.from_pretrained(
        model_id.removeprefix("hf-hub:"), revision=revision, trust_remote_code=trust_remote_code
    )
    set_drop_path(config, 0.0, model_id)
