"""Regularised fine-tuning: keep what the pretrained backbone knew while adapting to the task.

Each regulariser is a small ``nn.Module`` whose forward returns a scalar penalty that the task mode
adds to the classification loss inside the model's forward (so DDP, mixed precision and gradient
accumulation apply to it).

- :class:`L2SP`: Li, Grandvalet, Davoine, "Explicit Inductive Bias for Transfer Learning with
  Convolutional Networks", ICML 2018, https://arxiv.org/abs/1802.01483 ::

      Omega(w) = alpha / 2 * ||w_S - w_S^0||^2 + beta / 2 * ||w_new||^2

  ``w_S``: the backbone's (shared) parameters, ``w_S^0`` their pretrained values; ``w_new``: the new
  head's weights. It *replaces* weight decay (which pulls towards 0, forgetting the pretrained
  weights): the task mode sets the optimizer's weight decay to 0 when L2-SP is on.
- :class:`BSS`: Chen, Wang, Fu, Long, Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch
  Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019 (proceedings only; no arXiv id was
  found for it), authors' code: https://github.com/thuml/Batch-Spectral-Shrinkage ::

      L_bss(F) = eta * sum_{i=1..k} sigma_{-i}(F)^2

  the squares of the ``k`` smallest singular values of the batch feature matrix ``F`` (batch x dim):
  shrinking them suppresses the untransferable spectral components. Paper defaults: eta=1e-3, k=1.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_transfer.errors import TransferConfigError

REGULARIZERS = ("l2sp", "bss")


class L2SP(nn.Module):
    """Penalty towards the pretrained weights (backbone) plus L2 on the new head."""

    def __init__(
        self,
        backbone_params: list[tuple[str, nn.Parameter]],
        head_params: list[tuple[str, nn.Parameter]],
        alpha: float = 0.01,
        beta: float = 0.01,
    ) -> None:
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)
        # the anchors are plain attributes (not buffers): never in the model's state_dict or checkpoints,
        # and always the *pretrained* values, also after a resume
        self._params = [p for _, p in backbone_params]
        self._anchors = [p.detach().clone() for p in self._params]
        # L2 on the head's weight matrices (biases are not penalised, as for weight decay)
        self._head = [p for n, p in head_params if p.ndim > 1]

    def forward(self) -> torch.Tensor:
        device = self._params[0].device if self._params else self._head[0].device
        sp = torch.zeros((), device=device)
        for i, (p, p0) in enumerate(zip(self._params, self._anchors, strict=True)):
            if p.requires_grad:  # frozen parameters sit at their anchor anyway
                if p0.device != p.device:  # follow the model to its device once
                    p0 = self._anchors[i] = p0.to(p.device)
                sp = sp + (p - p0).pow(2).sum()
        head = sum((p.pow(2).sum() for p in self._head), torch.zeros((), device=device))
        return 0.5 * self.alpha * sp + 0.5 * self.beta * head


class BSS(nn.Module):
    """Batch Spectral Shrinkage on the pooled features of a batch."""

    def __init__(self, eta: float = 1e-3, k: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise TransferConfigError(f"bss_k={k}: must be >= 1.")
        self.eta, self.k = float(eta), int(k)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        sigma = torch.linalg.svdvals(features.float().flatten(1))  # descending
        k = min(self.k, sigma.numel())
        return self.eta * sigma[-k:].pow(2).sum()


def check_regularizer(name: str | None) -> str | None:
    """The ``regularizer`` option checked before training: a known name, or None for none/empty."""
    if name in (None, "", "none"):
        return None
    if name not in REGULARIZERS:
        raise TransferConfigError(f"regularizer={name!r}: choose one of {REGULARIZERS} (or leave it unset).")
    return name
