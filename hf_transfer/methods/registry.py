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
  for what the user leaves unset (e.g. LoRA's learning rate);
* ``needs`` (:class:`Needs`): what the method needs to run (source data, target images, target labels, a
  trainable backbone, BatchNorm layers, passes over the whole target training split); ``adapters``: it trains
  adapters (PEFT) instead of the backbone's weights; ``soft_targets``: its losses reach the labels only through
  a cross-entropy that also takes class probabilities (mixup/cutmix targets); ``required_options``: options it
  cannot run without;
  ``find_unused_parameters``: some training step leaves a trainable parameter without a gradient (DDP must
  look for unused parameters); ``owns_step``: the method runs its own passes per optimizer step (several
  updates on parts of the model, :mod:`hf_transfer.methods.domain.step`), which rules out what assumes one loss
  and one update per batch (FSDP/DeepSpeed engines, the learning-rate range test); ``schedules_unfreezing``: the
  method freezes and unfreezes the backbone on a schedule of its own (LP-FT), which rules out gradual unfreezing.

Which SHARED options (``TransferArguments`` fields such as ``trade_off``, ``freeze``, ``lora_r``) act with a
method is not listed per method: each option declares, with :func:`declare_option`, the modes and the method
properties it needs (:class:`OptionScope`); :func:`option_scope` and :meth:`Method.shared_options` derive the
rest, and :mod:`hf_transfer.config` refuses an option set where it has no effect.

This module imports nothing else from ``hf_transfer`` but the errors; the registrations live with the
methods (``methods/domain/<method>.py``, ``methods/finetune/catalog.py``, ``methods/options.py``) and are
imported by ``hf_transfer/methods/__init__.py``, which runs before this module is first imported.
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
class Needs:
    """What a method needs to run; options and validation read these, never a method's name."""

    #: a labelled source domain (``--source``), trained on with its labels
    source_data: bool = False
    #: target images during training (unlabelled in domain adaptation)
    target_images: bool = True
    #: the target's labels during training
    target_labels: bool = False
    #: backbone weights that train (False: frozen, or only adapters train)
    trainable_backbone: bool = True
    #: BatchNorm layers with running statistics in the backbone
    batchnorm: bool = False
    #: passes over every target training image while training (per-image pseudo-labels or memory banks refilled
    #: from the whole split): the split must be at hand, not read once as a stream
    target_pass: bool = False


#: the method properties an option's scope may name (:class:`OptionScope`)
PROPERTIES = (*(f.name for f in dataclasses.fields(Needs)), "adapters", "soft_targets", "schedules_unfreezing")


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
    needs: Needs = Needs()
    adapters: bool = False
    soft_targets: bool = False
    required_options: tuple[str, ...] = ()
    find_unused_parameters: bool = False
    owns_step: bool = False
    schedules_unfreezing: bool = False

    def has(self, prop: str) -> bool:
        """The method property ``prop`` (a :class:`Needs` field, ``adapters`` or ``soft_targets``)."""
        if prop not in PROPERTIES:
            raise ValueError(f"unknown method property {prop!r}; known: {', '.join(PROPERTIES)}")
        return bool(getattr(self.needs, prop) if hasattr(self.needs, prop) else getattr(self, prop))

    @property
    def is_baseline(self) -> bool:
        """Trained on the source alone (no target image): the method adapted ones are compared with."""
        return self.needs.source_data and not self.needs.target_images and not self.needs.target_labels

    def shared_options(self, mode: str) -> list[str]:
        """The shared options (:data:`OPTIONS`) that act with this method in ``mode``."""
        return [name for name, scope in OPTIONS.items() if scope.applies_to(self, mode)]

    def option_fields(self) -> dict[str, dataclasses.Field[Any]]:
        """The fields of this method's options dataclass (:attr:`config`), by name."""
        return {f.name: f for f in dataclasses.fields(self.config)}

    def option_defaults(self) -> dict[str, Any]:
        """This method's options at their defaults, by name."""
        return dataclasses.asdict(self.config())

    def options(self, given: Mapping[str, Any] | None = None) -> Any:
        """Check ``given`` (the user's ``method_args``) against :attr:`config`; returns the config instance.

        Unknown names and values of the wrong type are refused, naming them. Returns the config instance."""
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
    needs: Needs = Needs(),
    adapters: bool = False,
    soft_targets: bool = False,
    required_options: tuple[str, ...] = (),
    find_unused_parameters: bool = False,
    owns_step: bool = False,
    schedules_unfreezing: bool = False,
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
    if not isinstance(needs, Needs):
        raise TypeError(f"register_method({name!r}): needs must be a Needs, got {needs!r}")
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
        needs,
        bool(adapters),
        bool(soft_targets),
        tuple(required_options),
        bool(find_unused_parameters),
        bool(owns_step),
        bool(schedules_unfreezing),
    )
    METHODS[name] = method
    return method


@dataclass(frozen=True)
class OptionScope:
    """Where a shared option (or one value of it) acts: in ``modes``, with a method that has every property
    of ``requires`` and none of ``excludes``; ``backbone``: what the backbone must have for it to act
    (e.g. ``batchnorm``), checked on the architecture once it is known. ``why``: one line on why."""

    modes: tuple[str, ...]
    requires: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    backbone: tuple[str, ...] = ()
    why: str = ""

    def applies_to(self, method: Method, mode: str) -> bool:
        """Whether the option acts with ``method`` in ``mode`` (its backbone needs aside)."""
        return (
            mode in self.modes
            and mode in method.modes
            and all(method.has(p) for p in self.requires)
            and not any(method.has(p) for p in self.excludes)
        )

    def describe(self) -> str:
        """The scope in words, for a refusal: ``mode=task, a method with trainable_backbone``."""
        parts = [f"mode={' or '.join(self.modes)}"]
        parts += [f"a method with {p}" for p in self.requires]
        parts += [f"a method without {p}" for p in self.excludes]
        return ", ".join(parts) + (f" ({self.why})" if self.why else "")


#: option name (or ``name=value`` for one value of it) -> where it acts
OPTIONS: dict[str, OptionScope] = {}


def declare_option(
    name: str,
    *,
    modes: tuple[str, ...],
    requires: tuple[str, ...] = (),
    excludes: tuple[str, ...] = (),
    backbone: tuple[str, ...] = (),
    why: str = "",
) -> OptionScope:
    """Declare where the shared option ``name`` (``name=value``: that value only) acts (see :class:`OptionScope`)."""
    unknown = [p for p in (*requires, *excludes) if p not in PROPERTIES]
    if unknown:
        raise ValueError(f"declare_option({name!r}): unknown method properties {unknown}; known: {PROPERTIES}")
    if name in OPTIONS:
        raise ValueError(f"option {name!r} is already declared")
    OPTIONS[name] = scope = OptionScope(tuple(modes), tuple(requires), tuple(excludes), tuple(backbone), why)
    return scope


def option_scope(name: str, value: Any = None) -> OptionScope | None:
    """The declared scope of ``name=value`` if that value has one, else of ``name``; None: not a shared option."""
    if isinstance(value, str) and f"{name}={value}" in OPTIONS:
        return OPTIONS[f"{name}={value}"]
    return OPTIONS.get(name)


def methods_for_option(name: str, value: Any = None) -> dict[str, tuple[str, ...]]:
    """Method name -> the modes in which the option ``name`` (set to ``value``) acts with it."""
    scope = option_scope(name, value)
    if scope is None:
        return {}
    out = {n: tuple(mode for mode in m.modes if scope.applies_to(m, mode)) for n, m in METHODS.items()}
    return {n: modes for n, modes in out.items() if modes}


def option_applies(option: str, name: str | None, mode: str | None) -> bool:
    """Whether the shared ``option`` acts with the method ``name`` in ``mode``.

    Names may be read from a results.json: an unknown one is False."""
    method, scope = METHODS.get(name or ""), OPTIONS.get(option)
    return method is not None and scope is not None and scope.applies_to(method, mode or "")


def is_baseline(name: str | None) -> bool:
    """Whether ``name`` (e.g. read from a results.json) is a registered baseline method (:attr:`Method.is_baseline`)."""
    method = METHODS.get(name or "")
    return method is not None and method.is_baseline


def all_methods(mode: str | None = None) -> dict[str, Method]:
    """Registered methods in registration order, only those of ``mode`` when given."""
    return {n: m for n, m in METHODS.items() if mode is None or mode in m.modes}


def modes() -> tuple[str, ...]:
    """Every mode some method applies to, in registration order."""
    return tuple(dict.fromkeys(mode for m in all_methods().values() for mode in m.modes))


def default_method(mode: str) -> str:
    """The method a run of ``mode`` uses when it names none."""
    (name,) = [n for n, m in all_methods(mode).items() if mode in m.default_for]
    return name


def get_method(name: str, mode: str | None = None) -> Method:
    """The registered method ``name`` (of ``mode`` when given); TransferConfigError listing the known ones."""
    known = all_methods(mode)
    if name not in known:
        where = f"mode={mode}: " if mode else ""
        raise TransferConfigError(f"{where}unknown method {name!r}; available: {', '.join(known)}.")
    return known[name]
