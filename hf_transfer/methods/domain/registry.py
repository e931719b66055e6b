"""Registration of the domain-adaptation losses in the method registry (:mod:`hf_transfer.methods.registry`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hf_transfer.methods.domain.base import TransferLoss
from hf_transfer.methods.domain.source_free import SourceFreeLoss
from hf_transfer.methods.domain.step import SteppedLoss
from hf_transfer.methods.registry import Needs, NoOptions, get_method, register_method

#: name -> loss class of every registered domain method
LOSSES: dict[str, type[TransferLoss]] = {}

T = TypeVar("T", bound=type)


def register_loss(
    name: str,
    *,
    title: str,
    description: str,
    paper: str = "",
    config: type = NoOptions,
    backbone_lr_scale: float = 1.0,
    default: bool = False,
    target_images: bool = True,
    soft_targets: bool = True,
    find_unused_parameters: bool = False,
    source_free: bool = False,
) -> Callable[[T], T]:
    """Class decorator: the one registration call of a domain method (mode ``domain``).

    ``default``: the method used when none is given; see :func:`~hf_transfer.methods.registry.register_method`.

    A domain method needs the labelled source and a backbone that trains; ``target_images``: whether it
    trains on the (unlabelled) target images (False: the source-only baseline). ``soft_targets``: a
    ``TransferLoss`` never sees the labels, only the mode's cross-entropy does, which takes class
    probabilities too; a loss that reads labels itself declares False. ``source_free``: the method adapts a
    trained classifier (``--backbone``) to the target without any source data (a
    :class:`~hf_transfer.methods.domain.source_free.SourceFreeLoss`)."""

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, TransferLoss)):
            raise TypeError(f"register_loss({name!r}) expects a TransferLoss subclass, got {cls!r}")
        if source_free != issubclass(cls, SourceFreeLoss):
            raise TypeError(f"register_loss({name!r}): source_free=True goes with a SourceFreeLoss, and only with it")
        register_method(
            name,
            title=title,
            description=description,
            paper=paper,
            modes=("domain",),
            config=config,
            default_for=("domain",) if default else (),
            backbone_lr_scale=backbone_lr_scale,
            implementation=cls,
            # a source-free loss keeps per-image state that passes over the whole target split refill
            needs=Needs(
                source_data=not source_free, target_images=target_images, target_labels=False, target_pass=source_free
            ),
            soft_targets=soft_targets,
            find_unused_parameters=find_unused_parameters,
            owns_step=issubclass(cls, SteppedLoss),
        )
        LOSSES[name] = cls
        if not cls.__doc__:  # the method's module docstring holds the paper link and the formula
            cls.__doc__ = sys.modules[cls.__module__].__doc__
        cls.name, cls.paper, cls.options_type = name, paper, config  # type: ignore[attr-defined]
        return cls

    return deco


def build_loss(name: str, feature_dim: int, num_classes: int, **options: Any) -> TransferLoss:
    """Instantiate the registered loss ``name`` with ``options`` (its ``method_args``).

    Unknown ``name``, an option the method does not take, or a value of the wrong type ->
    ``TransferConfigError`` naming it and listing the accepted ones.
    """
    method = get_method(name, "domain")
    method.options(options)
    loss_class = method.implementation
    assert loss_class is not None and issubclass(loss_class, TransferLoss), "register_loss registers a TransferLoss"
    return loss_class(feature_dim=int(feature_dim), num_classes=int(num_classes), **options)
