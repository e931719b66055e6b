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
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_transfer.methods.domain.step import SteppedLoss
from hf_transfer.runtime.disk import ensure_free_space, space_errors
from hf_transfer.training.checkpoint_selection import ValidatorSelection
from hf_transfer.training.checkpoints import checkpoint_bytes
from hf_transfer.training.health_guard import HealthGuard
from hf_transfer.training.model_ema import ModelEma
from hf_transfer.training.modes.base import TransferMode, TransferModel
from hf_transfer.training.stepped import TrainerStepRunner, prepared_batches


class TransferTrainer(Trainer):
    """The one training loop (see the module docstring)."""

    #: ``--model_ema``: the moving average evaluated beside the weights at every evaluation (set by build_run)
    model_ema: ModelEma | None = None
    #: ``--checkpoint_selection``: the validator's pick among the evaluated steps (set by build_run; None: the last)
    checkpoint_selection: ValidatorSelection | None = None

    def __init__(self, *args: Any, transfer_mode: TransferMode, **kwargs: Any) -> None:
        self.transfer_mode = transfer_mode
        #: the ``metrics`` the mode returned with the latest training loss, logged with it
        self.step_metrics: dict[str, float] = {}
        #: a stepped method's micro-batches of the optimizer step under way (see _stepped_training_step)
        self._held_batches: list[dict] = []
        #: first among our callbacks: it checks after the Trainer's flow callback has decided to log or save, and
        #: writes its record into a checkpoint before run_identity.json marks the checkpoint complete
        self.health = HealthGuard(self)
        kwargs["callbacks"] = [self.health, *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)
        #: the method's own training step, or None for the one-loss path (decided once: no per-step lookup)
        self._stepped_method = transfer_mode.stepped_method(self._transfer_model)

    @contextlib.contextmanager
    def _drop_last(self, value: bool) -> Iterator[None]:
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
        n = len(self.train_dataset) if isinstance(self.train_dataset, Sized) else 0
        return (
            self.args.world_size == 1
            and n > 1
            and n % self.args.train_batch_size == 1
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self._transfer_model.modules())
        )

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's loader, dropping a last batch of one sample (see :meth:`_single_trailing_batch`)."""
        if isinstance(self.train_dataset, IterableDataset):  # --streaming: StreamedImages, or PairedStreams
            return self._stream_dataloader(self.train_dataset)
        with self._drop_last(self.args.dataloader_drop_last or self._single_trailing_batch()):
            return super().get_train_dataloader()

    def _stream_dataloader(self, stream: IterableDataset) -> DataLoader:
        """``--streaming``: a plain DataLoader over this process's part of the stream, NOT passed through
        ``accelerator.prepare``: accelerate would shard the (already per-process) stream again (IterableDatasetShard
        keeps one batch in N). The Trainer moves each batch to the device itself."""
        args = self.args
        return DataLoader(
            stream,
            batch_size=args.per_device_train_batch_size,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            drop_last=True,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers > 0 else None,
        )

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """The Trainer's loader with every row kept."""
        with self._drop_last(False):  # every evaluation row is scored, whatever the training loader does
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        """The Trainer's loader with every row kept."""
        with self._drop_last(False):
            return super().get_test_dataloader(test_dataset)

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """The Trainer's loop, unless the mode fits in one solve (feature mode's ``head_solver=lbfgs``)."""
        if not self.transfer_mode.fits_in_one_solve:
            checkpoint = resume_from_checkpoint
            if checkpoint is True:  # the Trainer's own meaning of True: the newest checkpoint-N
                from transformers.trainer_utils import get_last_checkpoint

                checkpoint = get_last_checkpoint(self.args.output_dir)
            self.health.resume_from(checkpoint if isinstance(checkpoint, str) else None)
            for callback in self.callback_handler.callbacks:  # state kept beside the weights (EMA, LP-FT's head)
                if callback is not self.health and hasattr(callback, "restore_from"):
                    callback.restore_from(checkpoint if isinstance(checkpoint, str) else None)
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        if resume_from_checkpoint:
            from hf_transfer.errors import TransferConfigError
            from hf_transfer.methods.feature.lbfgs_head import NO_RESUME

            raise TransferConfigError(NO_RESUME)
        return self.transfer_mode.fit(self)

    @property
    def _transfer_model(self) -> TransferModel:
        """The model the Trainer trains, as the mode built it (the Trainer types it as any model)."""
        model = self.model
        assert isinstance(model, TransferModel)
        return model

    def _progress(self) -> float:
        max_steps = max(1, self.state.max_steps or 1)
        return min(1.0, self.state.global_step / max_steps)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """One micro-batch: the Trainer's step, or a stepped method's passes; its loss goes to the health guard."""
        self.transfer_mode.set_progress(self._progress())
        stepped = self._stepped_method
        if stepped is None:  # the one-loss path: the Trainer's own step
            loss = super().training_step(model, inputs, num_items_in_batch)
            supervised = self.step_metrics.get("cls_loss")  # domain mode: the classification part of the loss
            if supervised is not None:  # scaled as the Trainer scales the loss under gradient accumulation
                supervised = supervised / self.current_gradient_accumulation_steps
        else:
            loss, supervised = self._stepped_training_step(model, inputs, stepped)
        self.health.observe(self.state.global_step + 1, loss, supervised)
        return loss

    def _stepped_training_step(
        self, model: nn.Module, inputs: dict[str, Any], stepped: SteppedLoss
    ) -> tuple[torch.Tensor, float | None]:
        """A method that owns its step (:mod:`hf_transfer.training.stepped`): the micro-batches of an optimizer
        step are held until its last one, then the method's passes run over all of them; the method's last
        update is left to the Trainer's own optimizer step. Returns what the Trainer adds to its loss record:
        zero for a held micro-batch, the method's reported loss (a mean over the micro-batches) at the last; and
        the classification part of it, for the health guard, likewise."""
        self._held_batches.append(inputs)
        if not self.accelerator.gradient_state.sync_gradients:
            return torch.zeros((), device=self.args.device), 0.0
        batches, self._held_batches = self._held_batches, []
        model.train()
        runner = TrainerStepRunner(
            self,
            model,
            prepared_batches(self, self._transfer_model, batches),
            self.transfer_mode.parameter_parts(self._transfer_model),
        )
        loss = stepped.train_step(runner)
        self.step_metrics = runner.metrics
        return loss.detach(), runner.metrics.get("cls_loss")

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The mode's loss (from the model's forward); its step metrics kept for the log."""
        outputs = model(**inputs)
        if "metrics" in outputs:  # training steps only: evaluation outputs carry none
            self.step_metrics = outputs.pop("metrics")
        loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer class over the mode's parameter groups (frozen groups left out)."""
        if self.optimizer is None:
            target = model if isinstance(model, TransferModel) else self._transfer_model
            groups = self.transfer_mode.optimizer_groups(target, self.args.learning_rate, self.args.weight_decay)
            if not groups:
                raise ValueError("Nothing to train: every parameter is frozen.")
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)  # type: ignore[arg-type]  # any nn.Module works
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, refused before anything is written when the disk has less room than it
        takes, and a full disk met while writing it re-raised as "no space left on <folder>, N MB needed".

        The new ``checkpoint-N`` folder is the only one written: the earlier checkpoints stay complete, and
        :func:`~hf_transfer.training.checkpoints.last_complete_checkpoint` skips a half-written one."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        needed = checkpoint_bytes(self._transfer_model, self.optimizer)
        ensure_free_space(folder, needed)
        with space_errors(folder, needed):
            super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints through safetensors, which refuses channels_last (non-contiguous) weights; a full disk
        is named (see :meth:`_save_checkpoint`)."""
        if state_dict is None:
            state_dict = self._transfer_model.state_dict()
        state_dict = {k: v if v.is_contiguous() else v.contiguous() for k, v in state_dict.items()}
        folder = output_dir if output_dir is not None else str(self.args.output_dir)
        needed = checkpoint_bytes(self._transfer_model)
        ensure_free_space(folder, needed)
        with space_errors(folder, needed):
            super()._save(output_dir, state_dict=state_dict)

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """The Trainer's evaluation, and with ``--model_ema`` the moving average's too (``eval_ema_<domain>_*``)."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if self.model_ema is None or isinstance(dataset, dict) or metric_key_prefix.startswith("eval_ema"):
            return metrics  # a dict: the Trainer evaluates each set through this method, which adds the EMA's
        with self.model_ema.swapped_in():
            ema = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix.replace("eval", "eval_ema", 1))
        return {**metrics, **ema}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with the mode's own numbers added to a training log."""
        if "loss" in logs:  # a training log: add the mode's own numbers (e.g. DANN's coefficient)
            logs = {**logs, **{k: round(v, 5) for k, v in self.step_metrics.items()}}
        super().log(logs, start_time)
