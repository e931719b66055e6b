"""The method registry: every method of every mode is one :func:`register_method` call.

A registration ties together what the rest of the package needs to know about a method, so that
nothing else keeps its own list: the CLI's validation and defaults (:mod:`hf_transfer.config`), the
dry run (:mod:`hf_transfer.training.plan`), the model card, the README's method table (checked by a test)
and the benchmarks all read :data:`METHODS`.

* ``name``, ``title``, ``description`` (one line) and ``paper``;
* ``config``: a dataclass of the method's own options (``--method_args``), each field with a
  ``help`` in its metadata; :meth:`Method.options` validates a user's mapping against it;
* ``modes``: the transfer modes the method applies to, and ``default_for``: the modes in which it is
  the method used when none is given;
* ``backbone_lr_scale``: the method's learning-rate rule, the backbone groups train at
  ``learning_rate * backbone_lr_scale`` unless ``--backbone_lr_scale`` is given (e.g. MDD's 0.1x);
* ``implementation``: the class that carries the method out (a domain method's loss), if any;
* ``recipe``: training defaults of the method on top of its mode's (``hf_transfer.training.defaults``), used
  for what the user leaves unset (e.g. LoRA's learning rate).

This module imports nothing else from ``hf_transfer`` but the errors; the registrations live with
the methods (``methods/domain/<method>.py``, ``methods/finetune/catalog.py``) and are imported on first use.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hf_transfer.errors import TransferConfigError


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that takes none."""


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    description: str
    paper: str
    modes: tuple[str, ...]
    config: type = NoOptions
    default_for: tuple[str, ...] = ()
    backbone_lr_scale: float = 1.0
    implementation: type | None = None
    recipe: Mapping[str, Any] | None = None

    def option_fields(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.config)}

    def option_defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config())

    def options(self, given: Mapping[str, Any] | None = None) -> Any:
        """``given`` (the user's ``method_args``) checked against :attr:`config`: unknown names and
        values of the wrong type are refused, naming them. Returns the config instance."""
        given = dict(given or {})
        fields = self.option_fields()
        unknown = sorted(set(given) - set(fields))
        if unknown:
            accepted = ", ".join(sorted(fields)) or "(none: this method takes no method_args)"
            raise TransferConfigError(f"method={self.name!r}: unknown method_args {unknown}; accepted: {accepted}.")
        hints = typing.get_type_hints(self.config)
        for key, value in given.items():
            if not _has_type(value, hints[key]):
                raise TransferConfigError(
                    f"method={self.name!r}: method_args {key}={value!r} must be of type {_type_name(hints[key])}."
                )
        return self.config(**given)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON/YAML value fits a config field's annotation (bool is not a number here)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    *,
    title: str,
    description: str,
    modes: tuple[str, ...],
    paper: str = "",
    config: type = NoOptions,
    default_for: tuple[str, ...] = (),
    backbone_lr_scale: float = 1.0,
    implementation: type | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> Method:
    """Register one method (see the module docstring); a second method of the same name is refused."""
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is already registered; choose another name")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"register_method({name!r}): config must be a dataclass, got {config!r}")
    missing = [f.name for f in dataclasses.fields(config) if not f.metadata.get("help")]
    if missing:
        raise ValueError(f"register_method({name!r}): options without a help text: {missing}")
    if not set(default_for) <= set(modes):
        raise ValueError(f"register_method({name!r}): default_for={default_for} outside modes={modes}")
    method = Method(
        name,
        title,
        description,
        paper,
        tuple(modes),
        config,
        tuple(default_for),
        float(backbone_lr_scale),
        implementation,
        dict(recipe) if recipe else None,
    )
    METHODS[name] = method
    return method


def _load() -> None:
    """Import the modules that register methods (on first use, so this module stays light)."""
    import hf_transfer.methods.domain  # noqa: F401
    import hf_transfer.methods.finetune.catalog  # noqa: F401


def all_methods(mode: str | None = None) -> dict[str, Method]:
    """Registered methods in registration order, only those of ``mode`` when given."""
    _load()
    return {n: m for n, m in METHODS.items() if mode is None or mode in m.modes}


def modes() -> tuple[str, ...]:
    """Every mode some method applies to, in registration order."""
    return tuple(dict.fromkeys(mode for m in all_methods().values() for mode in m.modes))


def default_method(mode: str) -> str:
    (name,) = [n for n, m in all_methods(mode).items() if mode in m.default_for]
    return name


def get_method(name: str, mode: str | None = None) -> Method:
    """The registered method ``name`` (of ``mode`` when given); TransferConfigError listing the known ones."""
    known = all_methods(mode)
    if name not in known:
        where = f"mode={mode}: " if mode else ""
        raise TransferConfigError(f"{where}unknown method {name!r}; available: {', '.join(known)}.")
    return known[name]
