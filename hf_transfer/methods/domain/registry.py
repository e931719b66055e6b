"""Name -> TransferLoss class registry (one entry per method)."""
from __future__ import annotations

import inspect
import sys
from typing import Callable, TypeVar

from hf_transfer.methods.domain.base import TransferLoss

LOSSES: dict[str, type[TransferLoss]] = {}

T = TypeVar("T", bound=type)


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_loss("dann")``. Refuses a name that is already taken."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"loss name must be a non-empty string, got {name!r}")

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, TransferLoss)):
            raise TypeError(f"register_loss({name!r}) expects a TransferLoss subclass, got {cls!r}")
        if name in LOSSES:
            raise ValueError(
                f"a loss named {name!r} is already registered ({LOSSES[name].__module__}."
                f"{LOSSES[name].__qualname__}); choose another name"
            )
        LOSSES[name] = cls
        if not cls.__doc__:  # the method's module docstring holds the paper link and the formula
            cls.__doc__ = sys.modules[cls.__module__].__doc__
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def loss_kwargs(name: str) -> dict[str, object]:
    """Method-specific keyword arguments of a registered loss and their defaults."""
    cls = _get(name)
    params = inspect.signature(cls.__init__).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "feature_dim", "num_classes")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _get(name: str) -> type[TransferLoss]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSSES))}") from None


def build_loss(name: str, feature_dim: int, num_classes: int, **kwargs) -> TransferLoss:
    """Instantiate the registered loss ``name``.

    Unknown ``name`` -> ``ValueError`` listing the registered names; a keyword argument the method
    does not take -> ``TypeError`` naming it and listing the accepted ones.
    """
    cls = _get(name)
    accepted = loss_kwargs(name)
    bad = sorted(k for k in kwargs if k not in accepted)
    if bad:
        raise TypeError(
            f"loss {name!r} got unexpected keyword argument(s) {', '.join(map(repr, bad))}; "
            f"accepted: {', '.join(sorted(accepted)) or '(none)'}"
        )
    return cls(feature_dim=int(feature_dim), num_classes=int(num_classes), **kwargs)
