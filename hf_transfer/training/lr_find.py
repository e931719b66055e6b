"""``--learning_rate auto``: a learning-rate range test picks the run's rate before training.

The test (Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017; fastai's ``lr_find``) trains
from the run's initial weights for ``steps`` batches while the rate grows exponentially from ``start`` to ``end``,
records the loss (smoothed as fastai does: an exponential moving average with bias correction), stops early once
the smoothed loss exceeds 4x its minimum, and picks a tenth of the rate at the minimum smoothed loss, the rule of
the fastai course. Every parameter group keeps its ratio to the base rate (discriminative rates, a frozen
backbone's absence), the mode's own loss is used (a domain method's alignment terms included), and the model's
weights, the RNG states and BatchNorm statistics are restored afterwards, so the run itself starts from exactly
where it would have without the test. Under DDP every process runs the test on its own batches and the loss of
each step is averaged over the processes, so all pick the same rate.

No maintained library runs this against a ``transformers.Trainer`` with our parameter groups (fastai's needs its
``Learner``; ``torch-lr-finder`` is unmaintained and takes one criterion), hence the code here.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hf_transfer.training.modes.base import TransferModel
from hf_transfer.training.trainer import TransferTrainer

logger = logging.getLogger(__name__)

#: where the curve and the pick are written in the output folder (a resumed run reuses the pick)
LR_FIND_FILE = "lr_find.json"


@dataclass
class RangeTestResult:
    """The curve (rate, smoothed loss per step) and the picked rate."""

    learning_rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    picked: float = 0.0
    min_loss_lr: float = 0.0
    rule: str = "a tenth of the rate at the minimum smoothed loss"
    steps_run: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        """JSON-ready, for results.json and lr_find.json."""
        return asdict(self)


def _rng_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _restore_rng(states: tuple) -> None:
    py, npy, cpu, cuda = states
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _mean_over_processes(value: float, device: torch.device) -> float:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / torch.distributed.get_world_size()
    return value


def pick_rate(learning_rates: list[float], losses: list[float]) -> tuple[float, float]:
    """The picked rate and the rate at the minimum smoothed loss.

    The pick is a tenth of the latter, never below the first rate tried."""
    finite = [(loss, lr) for lr, loss in zip(learning_rates, losses, strict=True) if math.isfinite(loss)]
    if not finite:
        raise ValueError("the range test gave no finite loss")
    _, at_min = min(finite)
    return max(at_min / 10.0, learning_rates[0]), at_min


def range_test(trainer: TransferTrainer, steps: int = 100, start: float = 1e-7, end: float = 1.0) -> RangeTestResult:
    """Run the test on ``trainer``'s model, loader and mode (see the module docstring); the model is unchanged after."""
    mode, model, args = trainer.transfer_mode, trainer.model, trainer.args
    assert isinstance(model, TransferModel), "before train() the Trainer holds the mode's own, unwrapped model"
    device = next(model.parameters()).device
    saved_weights = copy.deepcopy(model.state_dict())
    saved_rng = _rng_states()
    was_training = model.training
    groups = mode.optimizer_groups(model, 1.0, args.weight_decay)  # lr 1.0: each group's ratio to the base rate
    ratios = [g["lr"] for g in groups]
    # annotated PreTrainedModel, but the Trainer reads only nn.Module's named_modules/parameters from it
    optimizer_cls, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(args, model)  # type: ignore[arg-type]
    optimizer = optimizer_cls(groups, **{**optimizer_kwargs, "lr": start})
    result = RangeTestResult()
    smoothed, best, beta = 0.0, math.inf, 0.98
    mode.set_progress(0.0)
    loader = trainer.get_train_dataloader()
    batches = iter(loader)
    model.train()
    mode.on_train_mode(model)
    try:
        for step in range(steps):
            lr = start * (end / start) ** (step / max(steps - 1, 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            loss = trainer.compute_loss(model, trainer._prepare_inputs(batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            value = _mean_over_processes(float(loss.detach()), device)
            smoothed = beta * smoothed + (1 - beta) * (value if math.isfinite(value) else 1e30)
            debiased = smoothed / (1 - beta ** (step + 1))
            result.learning_rates.append(lr)
            result.losses.append(debiased)
            result.steps_run = step + 1
            best = min(best, debiased)
            if not math.isfinite(value) or debiased > 4 * best:
                result.stopped_early = True
                break
    finally:
        model.load_state_dict(saved_weights)
        _restore_rng(saved_rng)
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
        del optimizer
    result.picked, result.min_loss_lr = pick_rate(result.learning_rates, result.losses)
    return result


def _check_same_pick(picked: float, device: torch.device) -> None:
    """Under DDP every process must train at one rate (its own would drift from the others' weights unnoticed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    picks = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(picks, torch.tensor([picked], dtype=torch.float64, device=device))
    values = [float(p.item()) for p in picks]
    if len(set(values)) != 1:
        raise RuntimeError(f"learning_rate auto: the processes picked different rates {values}; rerun with a number")


def apply_range_test(
    trainer: TransferTrainer, output_dir: str, resuming: bool, is_main_process: bool
) -> RangeTestResult:
    """Pick the rate (or, when resuming, reuse the pick recorded in the folder) and set it on the trainer."""
    path = os.path.join(output_dir, LR_FIND_FILE)
    if resuming and os.path.isfile(path):
        with open(path) as f:
            result = RangeTestResult(**json.load(f))
        logger.info("learning_rate auto: reusing the range test's pick %.3g from %s", result.picked, path)
    else:
        result = range_test(trainer)
        logger.info(
            "learning_rate auto: range test over %d steps (%.0e .. %.0e): minimum smoothed loss at %.3g, picked %.3g",
            result.steps_run,
            result.learning_rates[0],
            result.learning_rates[-1],
            result.min_loss_lr,
            result.picked,
        )
        if is_main_process:
            from hf_transfer.runtime.cache import write_atomic

            write_atomic(path, json.dumps(result.to_dict(), indent=1))
    model = trainer.model
    assert model is not None, "the run's Trainer is built with its model"
    _check_same_pick(result.picked, next(model.parameters()).device)
    trainer.args.learning_rate = result.picked
    trainer.optimizer, trainer.lr_scheduler = None, None  # built by train() at the picked rate
    return result
