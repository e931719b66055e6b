"""A linear head fit on cached features by full-batch L-BFGS (``--head_solver lbfgs``).

Why: on cached features the head is a convex problem (multinomial logistic regression). The Trainer's
minibatch SGD pays a step's overhead (loader, hooks, optimizer, scheduler, logging) per batch for a
single ``nn.Linear``; L-BFGS reaches the optimum in tens of full-batch passes, as scikit-learn's
``LogisticRegression(solver="lbfgs")`` (the usual linear-probe solver) does. torch's own
``torch.optim.LBFGS`` (strong-Wolfe line search) does the optimisation; this module only builds the
objective over the feature memmap, in row chunks, so the whole matrix never has to sit in RAM at once.

Objective: mean cross-entropy (with the run's label smoothing) + ``l2 / 2 * ||W||^2`` (the bias is
not penalised). ``l2`` defaults to ``1 / n``, which is scikit-learn's default ``C=1`` written for a
mean loss.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["NO_RESUME", "fit_linear_head"]

#: why a resumed L-BFGS head is refused (by the argument checks before any work, and by the trainer itself)
NO_RESUME = (
    "resume_from_checkpoint: head_solver=lbfgs fits the head in one solve and writes no checkpoints; "
    "run it again instead."
)

CHUNK_ROWS = 65536


#: rows as a tensor, an array or a memory-mapped array (read in chunks)
Rows = torch.Tensor | np.ndarray


def _chunks(
    features: Rows, labels: Rows, device: torch.device | str, chunk_rows: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features, labels) row chunks on ``device``: the chunks of a memmap are read once and kept
    when they fit (the usual case); the caller passes tensors or arrays alike."""
    for start in range(0, len(features), chunk_rows):
        x = torch.as_tensor(np.asarray(features[start : start + chunk_rows]), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(labels[start : start + chunk_rows]), dtype=torch.long)
        yield x.to(device), y.to(device)


def fit_linear_head(
    head: nn.Linear,
    features: Rows,
    labels: Rows,
    *,
    l2: float | None = None,
    max_iter: int = 100,
    label_smoothing: float = 0.0,
    tolerance_grad: float = 1e-6,
    chunk_rows: int = CHUNK_ROWS,
) -> dict:
    """Fit ``head`` (in place, from its current weights) on ``features`` ``[N, D]`` and ``labels`` ``[N]``.

    Returns ``{"loss", "iterations", "max_iterations", "function_evaluations", "converged", "l2", "grad_norm"}``:
    ``loss`` is the final objective, ``converged`` whether the gradient fell below
    ``tolerance_grad`` before ``max_iter`` iterations."""
    n = len(features)
    if n == 0:
        raise ValueError("fit_linear_head: no training rows.")
    l2 = float(1.0 / n if l2 is None else l2)
    device = head.weight.device
    data = list(_chunks(features, labels, device, chunk_rows))
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=int(max_iter),
        max_eval=20 * int(max_iter),  # line searches: the iteration count is the limit, not evaluations
        tolerance_grad=tolerance_grad,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )
    evaluations = 0

    def objective() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad(set_to_none=False)
        total = torch.zeros((), device=device)
        for x, y in data:  # sum of per-chunk mean losses weighted by their share of the rows
            part = nn.functional.cross_entropy(head(x), y, label_smoothing=label_smoothing) * (len(y) / n)
            part.backward()
            total += part.detach()
        penalty = 0.5 * l2 * head.weight.pow(2).sum()
        penalty.backward()
        return total + penalty.detach()

    head.train()
    optimizer.step(objective)
    state = optimizer.state[optimizer._params[0]]
    iterations = int(state.get("n_iter", 0))
    loss = float(objective())  # the objective and its gradient at the final weights
    with torch.no_grad():
        # objective() ran last with zero_grad(set_to_none=False): every parameter has its gradient
        grad_norm = float(torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None]).abs().max())
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss": loss,
        "iterations": iterations,
        "max_iterations": int(max_iter),
        "function_evaluations": evaluations,
        "converged": iterations < max_iter,
        "l2": l2,
        "grad_norm": grad_norm,
    }
