"""Arguments from a YAML/JSON recipe, command-line flags, or a Python dict, into the two dataclasses.

One path for all three: the values become one typed dict (a file's values are converted with the parser's
own per-field types and choices, the flags are read by the parser into the keys they give), flags win over
the file, the recipe defaults (:mod:`hf_transfer.training.defaults`) fill what neither gives, and
``HfArgumentParser.parse_dict`` fills :class:`~hf_transfer.config.arguments.TransferArguments` and
``TrainingArguments`` once. Nothing is turned back into a command line. A key no dataclass knows, a prefix
typo (``--max_step``), a removed option and a model card's placeholder are refused, naming them.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hf_transfer.config.arguments import TransferArguments
from hf_transfer.config.checks import check_required_options, refuse_run_owned
from hf_transfer.config.file import read_config_file
from hf_transfer.errors import TransferConfigError
from hf_transfer.methods import registry

if TYPE_CHECKING:
    from transformers import HfArgumentParser, TrainingArguments


def _parser() -> HfArgumentParser:
    from transformers import HfArgumentParser, TrainingArguments
    from transformers.hf_argparser import DataClassType

    # allow_abbrev=False: argparse would otherwise take a prefix typo (--max_step) as the full name
    return HfArgumentParser((DataClassType(TransferArguments), DataClassType(TrainingArguments)), allow_abbrev=False)


#: options that were removed: naming one is refused with what replaced it (they are in no dataclass or help)
RETIRED_OPTIONS = {
    "merge_adapter": "merge_adapter is replaced by --publish: both (the default: merged model at the root + "
    "adapter/) or merged (merged model only). Remove merge_adapter.",
}


def _refuse_retired(keys: Iterable[str]) -> None:
    """A removed option is refused naming its replacement, not as an unknown key."""
    for key in sorted(set(keys) & set(RETIRED_OPTIONS)):
        raise TransferConfigError(RETIRED_OPTIONS[key])


def _known_keys() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for cls in (TransferArguments, TrainingArguments) for f in dataclasses.fields(cls)}


# a model card's reproduce block writes local paths as <OUTPUT_DIR>, <PATH_TO: outputs/x>, <REPO_ID>
CARD_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*(?::[^>]*)?>")
PLACEHOLDER_MEANING = {
    "OUTPUT_DIR": "a new folder of your choice",
    "PATH_TO": "that folder's path on this machine",
    "REPO_ID": "your Hub repo id",
}


def reject_placeholders(values: dict[str, Any], where: str) -> None:
    """Refuse a value still holding a placeholder of a model card's reproduce block, before anything runs.

    Otherwise ``<OUTPUT_DIR>`` becomes a folder of that name, and ``<PATH_TO: ...>`` a confusing load error."""
    for key, value in values.items():
        found = CARD_PLACEHOLDER.search(value) if isinstance(value, str) else None
        if found:
            name = found.group(0)[1:-1].split(":")[0]
            raise TransferConfigError(
                f"{where}: {key} is {value!r}, a placeholder from a model card's reproduce block; replace "
                f"{found.group(0)!r} with {PLACEHOLDER_MEANING.get(name, 'the value it stands for')}."
            )


def _checked_keys(data: dict[str, Any], where: str) -> None:
    """Removed options, unknown keys and card placeholders in a mapping of argument names, refused by name."""
    _refuse_retired(data)
    unknown = sorted(set(data) - _known_keys())
    if unknown:
        raise TransferConfigError(
            f"{where}: unknown key(s) {unknown}; they are neither TransferArguments nor TrainingArguments fields."
        )
    reject_placeholders(data, where)


def load_config_file(path: str) -> dict:
    """The arguments in a YAML/JSON config file, read within bounds (:mod:`hf_transfer.config.file`)."""
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise TransferConfigError(f"Config file {path!r} must hold a mapping of argument names to values.")
    _checked_keys(data, f"Config file {path!r}")
    return data


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Field name -> the parser's action that reads ``--name`` (its type, nargs and choices)."""
    return {opt[2:]: a for a in parser._actions for opt in a.option_strings if opt.startswith("--") and a.dest}


def _typed(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with each value converted as the parser converts that flag's text (``1e-3`` in YAML is a string;
    ``5.5`` for an int is refused), and checked against its choices. Mappings (``method_args``) and lists for a
    single-valued field (``report_to``) go through as they are, for the dataclass to check."""
    actions = _actions(_parser())
    out: dict[str, Any] = {}
    for key, value in data.items():
        action = actions.get(key)
        if key == "learning_rate" and _is_auto(value):
            out[key] = "auto"
            continue
        if action is None or isinstance(value, dict) or not callable(action.type):
            out[key] = value
            continue
        try:
            if isinstance(value, (list, tuple)):
                out[key] = [_convert(action, v) for v in value] if action.nargs in ("+", "*") else list(value)
            else:
                out[key] = _convert(action, value)
        except (TypeError, ValueError) as err:
            raise TransferConfigError(f"{where}: {key}={value!r}: {err}") from None
        choices = action.choices
        values = out[key] if isinstance(out[key], list) else [out[key]]
        if choices and any(v not in choices for v in values):
            raise TransferConfigError(f"{where}: {key}={value!r}: choose one of {list(choices)}.")
    return out


def _convert(action: argparse.Action, value: Any) -> Any:
    convert = action.type
    assert callable(convert), "_typed converts only the values of flags whose type is a callable"
    if isinstance(value, bool) or isinstance(value, enum.Enum):
        return value if convert not in (int, float) else convert(str(value))
    return convert(value if isinstance(value, str) else str(value))


def _flags(argv: list[str]) -> dict[str, Any]:
    """The arguments a command line gives, typed by the parser, as a dict of only the keys it sets."""
    parser = _parser()
    for action in parser._actions:
        action.required = False
        if action.dest != "help":
            action.default = argparse.SUPPRESS
        if action.dest == "learning_rate":  # "auto": a range test picks the rate
            action.type = lambda v: "auto" if _is_auto(v) else float(v)
    namespace, rest = parser.parse_known_args(argv)
    if rest:
        raise TransferConfigError(f"Unknown argument(s): {rest}")
    return vars(namespace)


def _given_keys(argv: list[str]) -> set[str]:
    """The argument names a command line sets (``--name value`` and ``--name=value``)."""
    return {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the ``--config`` file, the other arguments)."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if argv.count("--config") > 1:
        raise TransferConfigError("--config is given more than once; pass one config file (flags override it).")
    if "--config" not in argv:
        return None, argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise TransferConfigError("--config needs a file path.")
    return argv[i + 1], argv[:i] + argv[i + 2 :]


def parse_args(argv: list[str] | None = None) -> tuple[TransferArguments, TrainingArguments]:
    """Read ``[--config FILE] [--flag value ...]`` into (TransferArguments, TrainingArguments).

    With the recipe defaults (:mod:`hf_transfer.training.defaults`) for what neither sets."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv or "-h" in argv or "--help" in argv:
        from hf_transfer.help import full_help, short_help

        print(full_help(_parser()) if "--help-all" in argv else short_help(TransferArguments))
        raise SystemExit(0)
    path, argv = _split_config(argv)
    data = {}
    if path is not None:
        data = _typed(_without_none(load_config_file(path)), f"Config file {path!r}")
    _refuse_retired(_given_keys(argv))
    flags = _flags(argv)
    reject_placeholders(flags, "Command line")
    return _resolve({**data, **flags})


def arguments_from_dict(data: dict[str, Any]) -> tuple[TransferArguments, TrainingArguments]:
    """Python API: the same dataclasses from a plain dict (unknown keys are an error), with the recipe defaults."""
    _refuse_retired(data)
    unknown = sorted(set(data) - _known_keys())
    if unknown:
        raise TransferConfigError(f"Unknown argument(s) {unknown}.")
    _checked_keys(data, "Arguments")
    return _resolve(_typed(_without_none(data), "Arguments"))


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    """A key set to None (``key: null``) leaves the field at its default."""
    return {k: v for k, v in data.items() if v is not None}


def _resolve(given: dict[str, Any]) -> tuple[TransferArguments, TrainingArguments]:
    """The dataclasses from the given values (typed), the recipe defaults for the rest; ``learning_rate: auto``."""
    refuse_run_owned(given)
    auto_lr = _is_auto(given.get("learning_rate"))
    values = {k: v for k, v in given.items() if not (k == "learning_rate" and auto_lr)}
    transfer_args, training_args = _parse_dict(values)
    recipe = _recipe_defaults(transfer_args, set(given))
    if recipe:
        transfer_args, training_args = _parse_dict({**_typed(recipe, "Recipe defaults"), **values})
    transfer_args.recipe_defaults = recipe
    check_required_options(transfer_args)
    _set_lr_find(transfer_args, auto_lr)
    return transfer_args, resolve_precision(transfer_args, training_args)


def _parse_dict(data: dict[str, Any]) -> tuple[TransferArguments, TrainingArguments]:
    from transformers import TrainingArguments

    required = [f.name for c in (TransferArguments, TrainingArguments) for f in dataclasses.fields(c) if _no_default(f)]
    missing = [k for k in required if k not in data]
    if missing:
        raise TransferConfigError(f"Missing required argument(s): {', '.join('--' + k for k in missing)}.")
    try:
        transfer_args, training_args = _parser().parse_dict(data)
    except (TypeError, ValueError) as err:  # TrainingArguments' own validation (e.g. bf16 without a GPU)
        raise TransferConfigError(str(err)) from err
    return transfer_args, training_args


def _no_default(f: dataclasses.Field) -> bool:
    return f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _set_lr_find(transfer_args: TransferArguments, auto: bool) -> None:
    """``learning_rate: auto``: a range test picks the rate (refused where nothing trains with a rate)."""
    if auto and transfer_args.head_solver == "lbfgs":
        raise TransferConfigError(
            "learning_rate=auto has no effect with head_solver=lbfgs (a full-batch solve with a line search, no "
            "learning rate). Remove it, or use head_solver=sgd."
        )
    transfer_args.lr_find = auto


def _recipe_defaults(transfer_args: TransferArguments, given: set[str]) -> dict[str, Any]:
    """The mode's and method's recipe values for what the user left unset (see hf_transfer.training.defaults)."""
    from hf_transfer.training.defaults import defaults_to_apply, recipe_for

    if transfer_args.head_solver == "lbfgs":  # one full-batch solve: no optimizer, schedule or epochs to default
        return {}
    assert transfer_args.method is not None, "TransferArguments.__post_init__ sets the mode's default method"
    method = registry.get_method(transfer_args.method, transfer_args.mode)
    return defaults_to_apply(recipe_for(transfer_args.mode, method.recipe), given)


def resolve_precision(transfer_args: TransferArguments, training_args: TrainingArguments) -> TrainingArguments:
    """Apply ``auto_bf16``: bf16 on a bf16-capable CUDA device unless the user chose a precision."""
    import torch

    if (
        transfer_args.auto_bf16
        and not (training_args.bf16 or training_args.fp16)
        and not training_args.use_cpu
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
    ):
        training_args.bf16 = True
        training_args.mixed_precision = "bf16"  # what the Trainer's Accelerator reads (set in __post_init__)
    return training_args
