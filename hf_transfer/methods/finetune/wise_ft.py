"""WiSE-FT (Wortsman et al., CVPR 2022, https://arxiv.org/abs/2109.01903): weight-space ensembling of the starting
and the fine-tuned model, ``theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_ft``.

Every floating-point tensor of the state (weights and BatchNorm running statistics, as model soups do) is
interpolated; integer ones (``num_batches_tracked``) are the fine-tuned model's. The head at ``alpha = 0`` has to be
one that classifies the target's classes: LP-FT's probe head, or the backbone's own pretrained head when it already
has exactly those classes (the caller decides; see :mod:`hf_transfer.training.robust`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hf_transfer.errors import TransferConfigError

#: ``--wise_ft_alpha sweep``: the paper's grid
SWEEP = tuple(round(0.1 * i, 1) for i in range(11))


def parse_alphas(value: str | float) -> tuple[float, ...]:
    """The alphas of ``--wise_ft_alpha``: one number, comma-separated numbers, or ``sweep`` (0, 0.1, ..., 1)."""
    text = str(value).strip().lower()
    if text == "sweep":
        return SWEEP
    try:
        alphas = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise TransferConfigError(
            f"wise_ft_alpha={value!r}: give a number in [0, 1], comma-separated numbers (0,0.5,1) or 'sweep'."
        ) from None
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise TransferConfigError(f"wise_ft_alpha={value!r}: every alpha must be in [0, 1].")
    return tuple(sorted(set(alphas)))


@torch.no_grad()
def interpolate(
    start: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * finetuned`` for every floating-point tensor; the others from ``finetuned``."""
    missing = sorted(set(finetuned) ^ set(start))
    if missing:
        raise ValueError(f"WiSE-FT: the two states differ in their tensors: {missing[:5]}")
    out = {}
    for name, ft in finetuned.items():
        if ft.is_floating_point():
            out[name] = torch.lerp(start[name].to(ft.device, ft.dtype), ft, float(alpha))
        else:
            out[name] = ft.clone()
    return out
