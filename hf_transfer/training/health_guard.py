"""The health guard of the training loop: a run whose loss or weights stop being finite, or whose loss
explodes, stops with an error naming the step and the loss, before anything is saved from it.

Why: ``--learning_rate 1e38`` used to end in exit 0 with NaN weights, a logged loss of 0 and a pushed
model; ``--learning_rate 1e4`` at chance accuracy with a loss near 1e10. See
:mod:`hf_transfer.evaluation.run_health` for the marker such a stop leaves and the softer warnings.

Cost: :meth:`HealthGuard.observe` keeps a reference to each batch's loss tensor and never syncs with the
device; the losses are read (one copy, and under DDP one gather) and the weights checked only at the
steps where the Trainer logs, evaluates or saves, and at the end. So a non-finite loss never reaches a
checkpoint or an export, and no step pays a device sync of its own. (The Trainer's ``logging_nan_inf_filter``,
on by default, logged a NaN step as the mean of the others, so a NaN run logged a loss of 0; the guard checks
before the Trainer logs, so that can no longer hide a NaN. The filter's own per-step sync is the Trainer's.)

The guard also keeps the whole run's loss record across a resume (a small ``hf_transfer_health.json`` in
every checkpoint): the mean loss over every step, and the first and last steps' losses that the
divergence warning compares. The Trainer's own ``train_loss`` covers only the steps of the last
``train()`` call.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_transfer.evaluation.run_health import LOSS_WINDOW, fmt_loss, write_stop_marker
from hf_transfer.runtime.cache import write_atomic
from hf_transfer.training.checkpoints import last_complete_checkpoint

logger = logging.getLogger(__name__)

#: a batch loss this many times the run's first loss (at least 1.0) counts as an explosion and stops the run
EXPLOSION_FACTOR = 1e4
#: the reference loss never counts as lower than this: a run that starts near 0 may rise a little
EXPLOSION_FLOOR = 1.0
STATE_FILE = "hf_transfer_health.json"
#: batch losses kept as separate scalars before they are stacked into one tensor (no sync either way)
PACK_EVERY = 1024


class TrainingHealthError(RuntimeError):
    """The run was stopped for its health (non-finite loss, weights or outputs, or an exploding loss)."""


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` that hold a NaN or an infinity.

    One device sync for all of them."""
    named = [
        (name, t)
        for name, t in [*module.named_parameters(), *module.named_buffers()]
        if t is not None and t.is_floating_point() and t.numel()
    ]
    if not named:
        return []
    device = named[0][1].device
    flags = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, flags.tolist(), strict=True) if not ok]


class HealthGuard(TrainerCallback):
    """Owned by :class:`~hf_transfer.training.trainer.TransferTrainer`: it feeds :meth:`observe` each
    batch's loss; the callback hooks check at the log/evaluate/save steps and at the end."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        # the batches since the last check: steps and supervised losses on the host, losses on the device (a
        # scalar tensor each, stacked into one every PACK_EVERY batches: a run that never logs holds no more)
        self._steps: list[int] = []
        self._supervised: list[float] = []
        self._losses: list[torch.Tensor] = []
        self._packed: list[torch.Tensor] = []
        self._reset()

    def _reset(self) -> None:
        self.first_step: int | None = None  # the first step the loss record covers
        self.last_step = 0
        self.last_loss: float | None = None  # the newest healthy step's loss
        self.loss_sum = 0.0
        self.loss_steps = 0
        self.reference: float | None = None  # the run's first step loss (the explosion's yardstick)
        self.first_losses: list[float] = []  # supervised loss of the first LOSS_WINDOW steps
        self.last_losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        self.resumed_without_record: int | None = None  # resumed at this step from a checkpoint with no record
        self.note: str | None = None  # what train_loss covers, when a mode says it (the L-BFGS solve)
        for pending in (self._steps, self._supervised, self._losses, self._packed):
            pending.clear()

    # --- feeding ---------------------------------------------------------------------------------
    def observe(self, step: int, loss: torch.Tensor, supervised: float | None = None) -> None:
        """One micro-batch's loss (as the Trainer accumulates it) for optimizer step ``step``; no device sync.
        ``supervised``: the mode's classification part of it (domain mode), for the divergence warning."""
        self._steps.append(step)
        self._supervised.append(math.nan if supervised is None else float(supervised))
        self._losses.append(loss.detach().float().reshape(()))
        if len(self._losses) >= PACK_EVERY:
            self._packed.append(torch.stack(self._losses))
            self._losses.clear()

    def resume_from(self, checkpoint: str | None) -> None:
        """Continue the loss record of the checkpoint a run resumes from (or note that it has none)."""
        self._reset()
        if not checkpoint:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = None
        keys = ("first_step", "last_step", "loss_sum", "loss_steps", "reference", "first_losses", "last_losses")
        if not isinstance(saved, dict) or not all(k in saved for k in keys):  # written before the guard kept one
            try:
                with open(os.path.join(checkpoint, "trainer_state.json")) as f:
                    self.resumed_without_record = int(json.load(f).get("global_step", 0))
            except (OSError, ValueError, TypeError):
                self.resumed_without_record = 0
            return
        self.first_step, self.last_step = saved["first_step"], saved["last_step"]
        self.loss_sum, self.loss_steps, self.reference = saved["loss_sum"], saved["loss_steps"], saved["reference"]
        self.first_losses = list(saved["first_losses"])
        self.last_losses.extend(saved["last_losses"])
        self.resumed_without_record = saved.get("resumed_without_record")

    def record(self) -> dict:
        """The loss record as saved into a checkpoint."""
        return {
            "first_step": self.first_step,
            "last_step": self.last_step,
            "loss_sum": self.loss_sum,
            "loss_steps": self.loss_steps,
            "reference": self.reference,
            "first_losses": self.first_losses,
            "last_losses": list(self.last_losses),
            "resumed_without_record": self.resumed_without_record,
        }

    # --- checking --------------------------------------------------------------------------------
    def _step_losses(self) -> list[tuple[int, float, float]]:
        """(step, loss, supervised loss) of the pending batches: one copy from the device (one gather under
        DDP), micro-batches summed per step and the processes averaged, as the Trainer logs its loss."""
        if not self._steps:
            return []
        steps = list(self._steps)
        losses = torch.cat([*self._packed, *([torch.stack(self._losses)] if self._losses else [])])
        sups = torch.tensor(self._supervised, device=losses.device, dtype=losses.dtype)
        for pending in (self._steps, self._supervised, self._losses, self._packed):
            pending.clear()
        rows = torch.stack([losses, sups], dim=1)
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1:
            rows = accelerator.gather(rows)  # [processes * batches, 2], each process's batches in order
        per_step: dict[int, list[float]] = {}
        for i, (loss, sup) in enumerate(rows.cpu().tolist()):
            acc = per_step.setdefault(steps[i % len(steps)], [0.0, 0.0])
            acc[0] += loss
            acc[1] += loss if math.isnan(sup) else sup
        world = max(1, accelerator.num_processes)
        return [(s, v[0] / world, v[1] / world) for s, v in sorted(per_step.items())]

    def _problem(self, steps: list[tuple[int, float, float]]) -> tuple[str, int, float] | None:
        """(reason, step, loss) of the first unhealthy step, recording the healthy ones."""
        for step, loss, sup in steps:
            if not math.isfinite(loss):
                return "non-finite loss", step, loss
            if self.reference is None:
                self.reference = loss
            if loss > EXPLOSION_FACTOR * max(self.reference, EXPLOSION_FLOOR):
                return "exploding loss", step, loss
            self.first_step = step if self.first_step is None else self.first_step
            self.last_step, self.last_loss = step, loss
            self.loss_sum += loss
            self.loss_steps += 1
            if len(self.first_losses) < LOSS_WINDOW:
                self.first_losses.append(sup)
            self.last_losses.append(sup)
        return None

    def check(self, state: TrainerState, model: torch.nn.Module | None, where: str = "") -> None:
        """Read the pending losses and check the weights, stopping the run on the first problem.

        Stops (marker, then :class:`TrainingHealthError`) on the first non-finite or exploding loss or a
        non-finite weight."""
        problem = self._problem(self._step_losses())
        bad_weights = nonfinite_tensors(model) if model is not None else []
        accelerator = self.trainer.accelerator
        if accelerator.num_processes > 1 and model is not None:
            # the losses were gathered, so every process found the same problem; the weights may be sharded:
            # every process stops, or none does (a lone raise would leave the others waiting)
            flag = torch.tensor([float(bool(bad_weights))], device=accelerator.device)
            if accelerator.reduce(flag, "sum").item() and not bad_weights:
                bad_weights = ["(on another process)"]
        if problem is not None:
            reason, step, loss = problem
            if reason == "exploding loss":
                assert self.reference is not None, "an explosion is measured against the recorded first loss"
                detail = (
                    f"the loss {fmt_loss(loss)} is over {EXPLOSION_FACTOR:.0e} times the run's first loss "
                    f"({fmt_loss(self.reference)})"
                )
            else:
                detail = f"the loss is {fmt_loss(loss)}"
            self.stop(reason, step, loss, f"at step {step} {detail}")
        if bad_weights:
            last = fmt_loss(self.last_loss) if self.last_loss is not None else "not recorded"
            self.stop(
                "non-finite weights",
                state.global_step,
                self.last_loss if self.last_loss is not None else math.nan,
                f"after step {state.global_step}{where} the weights are not finite ({', '.join(bad_weights[:3])}"
                f"{', ...' if len(bad_weights) > 3 else ''}); the last step's loss was {last}",
            )

    def stop(self, reason: str, step: int, loss: float, what: str, advice: str = "") -> None:
        """Mark the output folder (main process) and raise :class:`TrainingHealthError`.

        Checkpoints written before this point passed the same check, so the newest one is the last good one."""
        output_dir = self.trainer.args.output_dir
        last_good = last_complete_checkpoint(output_dir) if output_dir else None
        message = (
            f"Training stopped ({reason}): {what}. "
            + (f"The last good checkpoint is {last_good}. " if last_good else "No checkpoint was saved before it. ")
            + "Nothing was exported; "
            + (advice or "lower the learning rate (or check the data for inf/NaN)")
            + " and train again."
        )
        if self.trainer.is_world_process_zero() and output_dir:
            write_stop_marker(
                output_dir,
                {
                    "reason": reason,
                    "step": int(step),
                    "loss": float(loss),
                    "last_good_checkpoint": os.path.basename(last_good) if last_good else None,
                    "message": message,
                },
            )
        logger.error(message)
        raise TrainingHealthError(message)

    # --- the Trainer's hooks -----------------------------------------------------------------------
    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.check(state, model)
        return control

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        if control.should_log or control.should_evaluate or control.should_save:  # save_strategy=epoch etc.
            self.check(state, model)
        return control

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        self.check(state, model)
        return control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.is_world_process_zero and args.output_dir is not None:  # the Trainer saves into its output_dir
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                write_atomic(os.path.join(folder, STATE_FILE), json.dumps(self.record()))
        return control

    # --- what the run reports ----------------------------------------------------------------------
    def train_loss(self) -> dict[str, Any] | None:
        """The mean loss and the steps it covers.

        The whole run, across resumes, unless the run was resumed from a checkpoint that recorded none (then
        the steps after it, and ``note`` says so)."""
        if not self.loss_steps:
            return None
        out: dict[str, Any] = {
            "mean": self.loss_sum / self.loss_steps,
            "first_step": self.first_step,
            "last_step": self.last_step,
        }
        if self.note:
            out["note"] = self.note
        elif self.resumed_without_record is not None:
            out["note"] = (
                f"steps {self.first_step}-{self.last_step} only: resumed at step {self.resumed_without_record} "
                "from a checkpoint that recorded no loss"
            )
        return out
