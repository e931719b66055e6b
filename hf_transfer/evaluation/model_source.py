"""What a model to evaluate is, read before any weight is loaded, and its loading with its own head.

A Hub id (transformers-native or timm, with a revision), a run folder written by hf_transfer, or a published
repo. A folder (or repo) with ``config.json`` is a full model; one with ``adapter_config.json`` (and no
``config.json``) is a LoRA adapter, loaded with its head and merged
(:func:`hf_transfer.models.adapters.load_adapter_model`). Preprocessing is the model's own: a run folder's or
adapter's recorded data config (what it was trained and evaluated with), else the one
:mod:`hf_transfer.models.backbones` derives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hf_transfer.errors import TransferConfigError

if TYPE_CHECKING:
    from hf_transfer.models.backbones import Backbone


def one_line(text: str) -> str:
    """Messages of other libraries span lines; an error of ``hf-transfer evaluate`` is one line."""
    return " ".join(str(text).split())


@dataclass
class ModelSource:
    """Where a model comes from and what it knows, read before any weight is loaded."""

    model_id: str
    kind: str  # "full" | "adapter"
    label_names: list[str]
    revision: str | None = None
    folder: str | None = None  # a local (or downloaded) folder
    data_config: dict | None = None  # recorded by hf_transfer (results.json / hf_transfer_adapter.json)
    seed: int | None = None  # a run's seed (results.json): the hold-out and subset it was scored on


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _recorded(folder: str) -> dict:
    """What a run folder (or downloaded repo) written by hf_transfer records in results.json ({} if none)."""
    from hf_transfer.models.export import RESULTS_FILE

    return _read_json(os.path.join(folder, RESULTS_FILE)) or {}


def _adapter_source(model_id: str, folder: str, revision: str | None) -> ModelSource:
    from hf_transfer.models.adapters import ADAPTER_INFO

    info = _read_json(os.path.join(folder, ADAPTER_INFO))
    if info is None or not info.get("label_names"):
        raise TransferConfigError(
            f"{model_id!r} is a LoRA adapter without {ADAPTER_INFO} (not written by hf-transfer): merge it into "
            "its base and evaluate the merged folder."
        )
    seed = _recorded(folder).get("seed")
    return ModelSource(model_id, "adapter", list(info["label_names"]), revision, folder, info.get("data_config"), seed)


def _hub_file(repo: str, name: str, revision: str | None) -> str | None:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, name, revision=revision)
    except Exception:  # not there, no such repo, offline: the caller decides what that means
        return None


def resolve_model(model_id: str, revision: str | None = None) -> ModelSource:
    """What ``model_id`` is and its class names, from configs only (see the module doc)."""
    from hf_transfer.models.backbones import checkpoint_label_names

    if os.path.isdir(model_id):
        if revision is not None:
            raise TransferConfigError(f"--revision {revision!r} applies to Hub models; {model_id!r} is a local folder.")
        folder = os.path.abspath(model_id)
        if os.path.isfile(os.path.join(folder, "config.json")):
            names, run = checkpoint_label_names(folder), _recorded(folder)
            return ModelSource(model_id, "full", names, None, folder, run.get("data_config"), run.get("seed"))
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            return _adapter_source(model_id, folder, None)
        raise TransferConfigError(
            f"Model folder {model_id!r} holds neither config.json (a full model) nor adapter_config.json (an adapter)."
        )
    try:
        names = checkpoint_label_names(model_id, revision=revision)
    except TransferConfigError as err:
        hub_id = model_id.removeprefix("hf-hub:")
        if "/" in hub_id and _hub_file(hub_id, "adapter_config.json", revision):  # a published adapter repo
            from huggingface_hub import snapshot_download

            return _adapter_source(model_id, snapshot_download(hub_id, revision=revision), revision)
        cause = err.__cause__ or err
        raise TransferConfigError(
            f"Could not load model {model_id!r} (revision={revision!r}): {type(cause).__name__}: "
            f"{one_line(str(cause))} Give a Hub id (org/name, timm/name), a run folder or a published repo."
        ) from err
    if not names:
        raise TransferConfigError(
            f"{model_id!r} is a timm architecture name (random init): it has no trained classifier to evaluate; "
            "give a Hub id (timm/NAME) or a folder."
        )
    run = {}
    if "/" in model_id and not model_id.startswith("timm/"):  # a published hf-transfer repo records its run
        from hf_transfer.models.export import RESULTS_FILE

        path = _hub_file(model_id.removeprefix("hf-hub:"), RESULTS_FILE, revision)
        run = (_read_json(path) or {}) if path else {}
    return ModelSource(model_id, "full", names, revision, None, run.get("data_config"), run.get("seed"))


def load_model(source: ModelSource) -> Backbone:
    """The :class:`~hf_transfer.models.backbones.Backbone` with the checkpoint's own head (and names)."""
    from hf_transfer.data.transforms import DataConfig
    from hf_transfer.models.backbones import Backbone, load_backbone  # noqa: F811 (built here; typed above)

    if source.kind == "adapter":
        from hf_transfer.models.adapters import ADAPTER_INFO, load_adapter_model

        assert source.folder is not None, "an adapter source is always read from its folder"
        model = load_adapter_model(source.folder, merge=True).eval()
        info = _read_json(os.path.join(source.folder, ADAPTER_INFO)) or {}
        backbone = Backbone(
            model=model,
            model_id=source.model_id,
            library=info.get("library", "transformers"),
            data_config=DataConfig(),
            revision=source.revision,
            head_pretrained=True,
        )
    else:
        backbone = load_backbone(source.folder or source.model_id, source.label_names, revision=source.revision)
        if not backbone.head_pretrained:
            raise TransferConfigError(
                f"{source.model_id!r} holds no classifier weights for its {len(source.label_names)} classes "
                "(a feature backbone): there is nothing to evaluate."
            )
    if source.data_config:
        recorded = dict(source.data_config)
        recorded["input_size"] = tuple(recorded["input_size"])
        recorded["mean"], recorded["std"] = tuple(recorded["mean"]), tuple(recorded["std"])
        backbone.data_config = DataConfig(**recorded)
    backbone.model.eval()
    return backbone
