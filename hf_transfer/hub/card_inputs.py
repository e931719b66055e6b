"""What a model card is built from: a run folder's ``results.json``, its exported files and the
arguments that reproduce it. Pure reads and small formatters shared by the card modules and push."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, overload

from hf_transfer.errors import TransferConfigError
from hf_transfer.methods.registry import option_applies
from hf_transfer.models.examples import REFERENCE_PREDICTIONS

README = "README.md"
RESULTS_FILE = "results.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
LR_FIND_PNG = "lr_find.png"
WISE_FT_PNG = "wise_ft.png"
CONFIG_FILE = "train_config.yaml"
HUB = "https://huggingface.co"


@overload
def load_results(source: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]: ...


@overload
def load_results(source: None) -> None: ...


@overload
def load_results(source: str | os.PathLike[str] | dict[str, Any] | None) -> dict[str, Any] | None: ...


def load_results(source: str | os.PathLike[str] | dict[str, Any] | None) -> dict[str, Any] | None:
    """A results dict from a dict, a ``results.json`` path, or a run folder (None passes through)."""
    if source is None or isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No results.json at {str(source)!r} (expected a hf-transfer output folder).")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TransferConfigError(
            f"{path} is not valid JSON ({err}): it is not a results.json written by "
            "hf-transfer; re-run the training or restore the file."
        ) from err
    if not isinstance(results, dict):
        raise TransferConfigError(
            f"{path} holds a JSON {type(results).__name__}, not the object of a results.json "
            "written by hf-transfer; re-run the training or restore the file."
        )
    return results


def dataset_info(spec: str | None) -> dict | None:
    """What a card says of a dataset spec string: kind (builtin | local | hub), display name, Hub id/config/revision."""
    if not spec:
        return None
    from hf_transfer.data.spec import parse_dataset_spec

    try:
        s = parse_dataset_spec(spec)
        kind, name, config, revision, split = s.kind, s.name, s.config, s.revision, s.split
        display = s.display_name
    except TransferConfigError:  # a local path of another machine
        kind, name, config, revision, split = "local", spec, None, None, None
        display = os.path.basename(spec.rstrip("/"))
    return {
        "kind": kind,
        "id": name if kind == "hub" else None,
        "config": config,
        "revision": revision,
        "split": split,
        "display": display,
    }


def enum_value(value: Any) -> Any:
    """``OptimizerNames.ADAMW_TORCH`` -> ``adamw_torch`` (``str()`` of an enum, as results.json stores it)."""
    if isinstance(value, str) and re.fullmatch(r"[A-Z]\w*\.[A-Z0-9_]+", value):
        return value.split(".", 1)[1].lower()
    return value


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal ("-" when unknown)."""
    return "-" if x is None else f"{100 * x:.1f}%"


def accuracy(results: dict | None, domain: str) -> float | None:
    """The test accuracy of ``domain`` (target | source) in a results dict, None when not measured."""
    if not results:
        return None
    return ((results.get("metrics") or {}).get(domain) or {}).get("accuracy")


def folder_library(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What the exported folder is: ``{"library": transformers|peft, "timm": bool}``."""
    folder = Path(folder)
    config = {}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
    peft = (folder / "adapter_config.json").is_file()
    return {
        "library": "peft" if peft else "transformers",
        "timm": config.get("model_type") == "timm_wrapper" or "TimmWrapper" in str(config.get("architectures")),
        "architecture": config.get("architecture") or (config.get("architectures") or [None])[0],
    }


def reference_rows(folder: str | os.PathLike) -> list[dict]:
    """The example images and their predictions stored at export ([] when the folder has none)."""
    path = Path(folder) / REFERENCE_PREDICTIONS
    return json.loads(path.read_text()) if path.is_file() else []


def training_config(results: dict) -> tuple[dict, bool]:
    """The arguments that reproduce the run, and whether they are exactly the ones it ran with.

    Uses ``results["arguments"]`` when the run stored them; otherwise rebuilds them from the recorded fields (then
    not guaranteed exact)."""
    if isinstance(results.get("arguments"), dict):
        return dict(results["arguments"]), True
    hp = results.get("hyperparameters") or {}
    dc = results.get("data_config") or {}
    cfg: dict[str, Any] = {
        "mode": results.get("mode"),
        "method": results.get("method"),
        "backbone": results.get("backbone"),
        "backbone_revision": results.get("backbone_revision"),
        "source": results.get("source"),
        "target": results.get("target"),
        "method_args": results.get("method_args") or None,
    }
    if results.get("mode") == "domain":
        cfg["trade_off"] = results.get("trade_off")
        cfg["adabn"] = results.get("adabn") or None
    if results.get("frozen_groups") and option_applies("freeze", results.get("method"), results.get("mode")):
        cfg["freeze"] = ",".join(results["frozen_groups"])
    if dc.get("input_size"):
        cfg["image_size"] = int(dc["input_size"][-1])
    cfg["crop_pct"] = dc.get("crop_pct")
    cfg["augment"] = results.get("augment")
    cfg["seed"] = results.get("seed")
    for key in (
        "learning_rate",
        "backbone_lr_scale",
        "per_device_train_batch_size",
        "max_steps",
        "weight_decay",
        "optim",
        "lr_scheduler_type",
        "warmup_steps",
    ):
        if hp.get(key) is not None:
            cfg[key] = enum_value(hp[key])
    if hp.get("max_steps") in (None, -1, 0) and hp.get("num_train_epochs") is not None:
        cfg["num_train_epochs"] = hp["num_train_epochs"]
    return {k: v for k, v in cfg.items() if v is not None}, False


OUTPUT_DIR_PLACEHOLDER = "<OUTPUT_DIR>"
REPO_ID_PLACEHOLDER = "<REPO_ID>"


def is_local_backbone(backbone: str | None, base_model: str | None) -> bool:
    """Whether ``backbone`` named a folder on the training machine (not a Hub id, not a timm architecture).

    Decided from the recorded strings, so it holds on another machine where the folder does not exist."""
    if not backbone or base_model:
        return False
    return os.path.isabs(backbone) or "/" in backbone or os.sep in backbone or os.path.isdir(backbone)


def path_placeholder(path: str) -> str:
    """A local path of the training machine as a placeholder the reader must fill in."""
    return f"<PATH_TO: {path}>"


def _is_local_value(key: str, value: Any, results: dict) -> bool:
    """Whether an argument's value is a path on the machine that trained the run."""
    if not isinstance(value, str) or not value:
        return False
    if key == "backbone":
        return is_local_backbone(value, results.get("base_model"))
    if key in ("source", "target"):
        return (dataset_info(value) or {}).get("kind") == "local"
    return key.endswith("_dir") or os.path.isabs(value) or value.startswith(("./", "../", "~"))


def run_config(results: dict) -> tuple[dict, bool]:
    """The run's :func:`training_config` as a card shows it, local paths replaced by placeholders.

    Every local path (the output folder, a local backbone or dataset, a cache folder) means nothing on another
    machine."""
    config, exact = training_config(results)
    config = {k: (path_placeholder(v) if _is_local_value(k, v, results) else v) for k, v in config.items()}
    config["output_dir"] = OUTPUT_DIR_PLACEHOLDER
    return config, exact


def placeholders_in(config: dict) -> list[str]:
    """The placeholder values of a config (what a reader replaces before running it)."""
    return [v for v in config.values() if isinstance(v, str) and v.startswith("<") and v.endswith(">")]


def governing_schedule(results: dict) -> str | None:
    """Which argument set the training length: ``max_steps`` or ``num_train_epochs``.

    ``max_steps`` when set > 0 (it overrides the epochs); None when the run did not record its arguments."""
    arguments = results.get("arguments")
    if not isinstance(arguments, dict):
        return None
    return "max_steps" if (arguments.get("max_steps") or -1) > 0 else "num_train_epochs"
