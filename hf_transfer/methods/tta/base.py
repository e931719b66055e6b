"""The contract of a test-time adaptation method, and what every method shares.

A :class:`TestTimeMethod` takes one batch at a time: :meth:`~TestTimeMethod.adapt` calls ``forward()`` (the model on
the batch, with gradients) as often as the method needs, updates the parameters given to its optimizer and
returns the logits the batch is predicted with: those of the first forward, before this batch's update, as in
TENT's online protocol. What a method keeps across batches (EATA's moving mean prediction) is reset by
:meth:`~TestTimeMethod.reset` when the loop resets the model. ``last_metrics["collapse_signal"]``: the entropy
the loop's collapse detector averages (``--reset on_collapse``, SAR's model recovery).

Which parameters adapt, and how the model runs, is the same for every method (TENT's recipe,
:func:`configure_for_tta`): everything frozen but the affine weight and bias of the normalisation layers
(BatchNorm, LayerNorm, GroupNorm), BatchNorm in train mode so that it normalises with each batch's statistics.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from hf_transfer.methods.registry import Needs, NoOptions, get_method, register_method

#: name -> class of every registered test-time method
TTA_METHODS: dict[str, type[TestTimeMethod]] = {}
#: the mode of the test-time methods (not trained by ``hf-transfer train``: see ``hf-transfer tta``)
TTA_MODE = "tta"
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)

T = TypeVar("T", bound=type)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of each row's softmax prediction, in float32 at least."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return -(x.softmax(1) * x.log_softmax(1)).sum(1)


def entropy_margin(fraction: float, num_classes: int) -> float:
    """EATA's and SAR's reliability margin ``E_0 = fraction * ln(C)`` (their 0.4 ln 1000 on ImageNet)."""
    return float(fraction) * math.log(max(2, int(num_classes)))


def norm_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine weight and bias of every BatchNorm, LayerNorm and GroupNorm layer (what TTA adapts)."""
    params = []
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            params += [p for name, p in module.named_parameters(recurse=False) if name in ("weight", "bias")]
    return params


def configure_for_tta(model: nn.Module) -> list[nn.Parameter]:
    """Freeze all but the normalisation layers' affine parameters; BatchNorm normalises with each batch's statistics.

    The model is put in eval mode (dropout off) with its BatchNorm layers in train mode; their running statistics
    restart and become the cumulative average over the batches seen (momentum None), so the adapted model also
    predicts one image at a time (eval mode) with the target's statistics. Returns the parameters that adapt."""
    model.eval()
    model.requires_grad_(False)
    params = norm_affine_parameters(model)
    for p in params:
        p.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.train()
            module.reset_running_stats()
            module.momentum = None
    return params


def restore_batchnorm_momentum(model: nn.Module, momentum: float = 0.1) -> None:
    """BatchNorm back to the usual exponential average (torch's default 0.1) and eval mode, for the export."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
    model.eval()


class TestTimeMethod:
    """One test-time method over a stream of batches (see the module docstring)."""

    options_type: type = NoOptions
    paper: str = ""

    def __init__(
        self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, num_classes: int, **options: Any
    ) -> None:
        self.options = self.options_type(**options)
        self.params, self.optimizer, self.num_classes = params, optimizer, int(num_classes)
        self.last_metrics: dict[str, float] = {}

    def adapt(self, forward: Callable[[], torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        """One online step on a batch; the batch's logits before its update (detached)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what was kept across batches (the loop resets the model and the optimizer)."""

    def step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` and take one optimizer step on the adapted parameters."""
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def register_tta(
    name: str,
    *,
    title: str,
    description: str,
    paper: str,
    config: type = NoOptions,
    learning_rate: float,
    reset: str = "never",
    default: bool = False,
) -> Callable[[T], T]:
    """Class decorator: the one registration of a test-time method (mode ``tta``).

    ``learning_rate`` and ``reset``: the method's recipe, used when ``hf-transfer tta`` is given none."""

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, TestTimeMethod)):
            raise TypeError(f"register_tta({name!r}) expects a TestTimeMethod subclass, got {cls!r}")
        register_method(
            name,
            title=title,
            description=description,
            paper=paper,
            modes=(TTA_MODE,),
            config=config,
            default_for=(TTA_MODE,) if default else (),
            implementation=cls,
            recipe={"learning_rate": learning_rate, "reset": reset},
            needs=Needs(source_data=False, target_images=True, trainable_backbone=False),
        )
        TTA_METHODS[name] = cls
        if not cls.__doc__:
            cls.__doc__ = sys.modules[cls.__module__].__doc__
        cls.options_type, cls.paper = config, paper
        return cls

    return deco


def build_tta_method(
    name: str, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, num_classes: int, **options: Any
) -> TestTimeMethod:
    """The registered test-time method ``name`` with its checked ``options`` (a bad one named)."""
    method = get_method(name, TTA_MODE)
    method.options(options)
    cls = method.implementation
    assert cls is not None and issubclass(cls, TestTimeMethod), "register_tta registers a TestTimeMethod"
    return cls(params, optimizer, num_classes, **options)
