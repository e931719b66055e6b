"""AdaBN: Adaptive Batch Normalization (Li et al., 2016, https://arxiv.org/abs/1603.04779).

No extra training: after training, every BatchNorm layer's running statistics are reset and
re-estimated on target data,

    mu_t = 1/K * sum_k mean(x_k),    sigma_t^2 = 1/K * sum_k var(x_k)     over K target batches

(``momentum=None`` gives PyTorch's cumulative average over batches). Only ``running_mean``,
``running_var`` and ``num_batches_tracked`` change; every parameter (including the BN affine
``weight``/``bias``) stays bit-identical, no gradient is computed, and each module's training flag
and each BN layer's momentum are restored afterwards. Dropout and the like stay in eval mode during
the passes (only BN layers are put in train mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

LABEL_KEYS = ("labels", "label", "targets")


def _to(x: Any, device: torch.device | str | None) -> Any:
    """``x`` (a tensor, or a mapping or sequence of them) on ``device``; as it is when ``device`` is None."""
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def default_forward(model: nn.Module, batch: Any) -> Any:
    """The model's output on ``batch``, whatever form the batch takes.

    Tensor -> ``model(batch)``; mapping -> ``model(**batch)`` without label keys; tuple/list -> ``model(batch[0])``
    (inputs first, labels ignored)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k not in LABEL_KEYS})
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    raise TypeError(f"cannot feed a batch of type {type(batch).__name__}; pass forward=")


def _running_stats(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The running mean, variance and batch count of a layer that tracks them (every one AdaBN touches)."""
    assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
    return bn.running_mean, bn.running_var, bn.num_batches_tracked


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics (the ones AdaBN re-estimates)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Re-estimate the BN running statistics of ``model`` on target ``batches``; returns ``model``.

    ``forward(model, batch)`` runs one batch (default: :func:`default_forward`); ``device``: move
    tensors there first (default: the device of the model's first parameter or buffer). Raises ``ValueError``
    when ``batches`` is empty (the statistics would be left reset); does nothing if the model has
    no BatchNorm layer with running statistics.
    """
    bns = batchnorm_layers(model)
    if not bns:
        return model
    forward = forward or default_forward
    if device is None:
        t: torch.Tensor | None = next(iter(model.parameters()), None)
        if t is None:
            t = next(iter(model.buffers()), None)
        device = t.device if t is not None else None
    flags = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    saved = {bn: tuple(s.clone() for s in _running_stats(bn)) for bn in bns}
    n = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for batch in batches:
            if max_batches is not None and n >= max_batches:
                break
            forward(model, _to(batch, device))
            n += 1
        if n == 0:
            raise ValueError("adapt_batchnorm got no batches; running statistics left unchanged")
    except BaseException:
        for bn, stats in saved.items():
            for live, kept in zip(_running_stats(bn), stats, strict=True):
                live.copy_(kept)
        raise
    finally:
        for bn, mom in momenta.items():
            bn.momentum = mom
        for m, flag in flags.items():
            m.training = flag
    return model
