"""TransferTrainer: the one training loop, a ``transformers.Trainer`` that delegates to a mode.

The mode supplies the loss (inside :class:`~hf_transfer.training.modes.TransferModel`'s forward, so DDP,
mixed precision and gradient accumulation apply to all of it) and the optimizer's parameter
groups (frozen groups left out, per-group learning rates). Everything else (accelerate, DDP/FSDP,
checkpoints, resume, logging, trackers, ``push_to_hub`` plumbing) is the Trainer's own.

Schedules are restored exactly on resume because the mode reads training progress from
``state.global_step``, which the Trainer checkpoints, never from a counter of its own.

Saves check the disk first and name it when it is full (torch itself only says ``unexpected pos``):
see :meth:`TransferTrainer._save_checkpoint`.
Every TransferTrainer carries a :class:`~hf_transfer.training.health_guard.HealthGuard` (``self.health``):
each batch's loss goes to it, and it stops the run before a non-finite or exploding loss, or non-finite
weights, reach a checkpoint or an export.
"""

from __future__ import annotations

import contextlib
import os

from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_transfer.runtime.disk import ensure_free_space, space_errors
from hf_transfer.training.checkpoints import checkpoint_bytes
from hf_transfer.training.health_guard import HealthGuard


class TransferTrainer(Trainer):
    def __init__(self, *args, transfer_mode, **kwargs):
        self.transfer_mode = transfer_mode
        #: the ``metrics`` the mode returned with the latest training loss, logged with it
        self.step_metrics: dict[str, float] = {}
        #: first among our callbacks: it checks after the Trainer's flow callback has decided to log or save, and
        #: writes its record into a checkpoint before run_identity.json marks the checkpoint complete
        self.health = HealthGuard(self)
        kwargs["callbacks"] = [self.health, *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def _drop_last(self, value: bool):
        """``args.dataloader_drop_last`` while one loader is built: the Trainer applies it to every loader."""
        saved = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = value
        try:
            yield
        finally:
            self.args.dataloader_drop_last = saved

    def _single_trailing_batch(self) -> bool:
        """An epoch would end on a batch of ONE sample, which BatchNorm cannot train on (it crashed).

        One process only: under DDP accelerate fills the last batch of every process. Fixed by the
        dataset size and the batch size, so an interrupted run drops the same batches on resume."""
        n = len(self.train_dataset) if self.train_dataset is not None else 0
        return (
            self.args.world_size == 1
            and n > 1
            and n % self.args.train_batch_size == 1
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        )

    def get_train_dataloader(self):
        with self._drop_last(self.args.dataloader_drop_last or self._single_trailing_batch()):
            return super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset=None):
        with self._drop_last(False):  # every evaluation row is scored, whatever the training loader does
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._drop_last(False):
            return super().get_test_dataloader(test_dataset)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """The Trainer's loop, unless the mode fits in one solve (feature mode's ``head_solver=lbfgs``)."""
        if not self.transfer_mode.fits_in_one_solve:
            checkpoint = resume_from_checkpoint
            if checkpoint is True:  # the Trainer's own meaning of True: the newest checkpoint-N
                from transformers.trainer_utils import get_last_checkpoint

                checkpoint = get_last_checkpoint(self.args.output_dir)
            self.health.resume_from(checkpoint if isinstance(checkpoint, str) else None)
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        if resume_from_checkpoint:
            from hf_transfer.errors import TransferConfigError
            from hf_transfer.methods.feature.lbfgs_head import NO_RESUME

            raise TransferConfigError(NO_RESUME)
        return self.transfer_mode.fit(self)

    def _progress(self) -> float:
        max_steps = max(1, self.state.max_steps or 1)
        return min(1.0, self.state.global_step / max_steps)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.transfer_mode.set_progress(self._progress())
        loss = super().training_step(model, inputs, num_items_in_batch)
        supervised = self.step_metrics.get("cls_loss")  # domain mode: the classification part of the loss
        if supervised is not None:  # scaled as the Trainer scales the loss under gradient accumulation
            supervised = supervised / self.current_gradient_accumulation_steps
        self.health.observe(self.state.global_step + 1, loss, supervised)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if "metrics" in outputs:  # training steps only: evaluation outputs carry none
            self.step_metrics = outputs.pop("metrics")
        loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            target = model if model is not None else self.model
            groups = self.transfer_mode.optimizer_groups(target, self.args.learning_rate, self.args.weight_decay)
            if not groups:
                raise ValueError("Nothing to train: every parameter is frozen.")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint, refused before anything is written when the disk has less room than it
        takes, and a full disk met while writing it re-raised as "no space left on <folder>, N MB needed".

        The new ``checkpoint-N`` folder is the only one written: the earlier checkpoints stay complete, and
        :func:`~hf_transfer.training.checkpoints.last_complete_checkpoint` skips a half-written one."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        needed = checkpoint_bytes(self.model, self.optimizer)
        ensure_free_space(folder, needed)
        with space_errors(folder, needed):
            super()._save_checkpoint(model, trial)

    def _save(self, output_dir=None, state_dict=None):
        """Checkpoints through safetensors, which refuses channels_last (non-contiguous) weights; a full disk
        is named (see :meth:`_save_checkpoint`)."""
        if state_dict is None:
            state_dict = self.model.state_dict()
        state_dict = {k: v if v.is_contiguous() else v.contiguous() for k, v in state_dict.items()}
        folder = output_dir if output_dir is not None else self.args.output_dir
        needed = checkpoint_bytes(self.model)
        ensure_free_space(folder, needed)
        with space_errors(folder, needed):
            super()._save(output_dir, state_dict=state_dict)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the mode's own numbers (e.g. DANN's coefficient)
            logs = {**logs, **{k: round(v, 5) for k, v in self.step_metrics.items()}}
        super().log(logs, start_time)
