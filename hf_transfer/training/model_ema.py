"""``--model_ema``: an exponential moving average of the weights, through timm's ``ModelEmaV3``.

``ModelEmaV3`` averages every floating-point tensor of a module's ``state_dict`` (weights and BatchNorm
statistics), with timm's decay warm-up and bf16 stochastic rounding. It keeps its average in a ``deepcopy`` of the
module it is given; given the live model, that copy would drag along what hangs off it (the mode and its datasets
through the model's back-reference, hooks bound to the mode's methods), so it is given :class:`_StateHolder`
instead: one tensor per entry of the model's ``state_dict``, in the same order, which is all ``ModelEmaV3``'s
update reads. The averaged state is copied into the model to evaluate it (:meth:`ModelEma.swapped_in`) or to
export it (:meth:`ModelEma.load_into`).

Exact resume: the decay is a function of the optimizer step the Trainer restores (``update(model, step)``, as
timm's train.py), and the average (with the rounding generator's state) is saved into every checkpoint and read
back on resume. Under DDP the weights are equal on every process after each step, but each process updates its
own BatchNorm statistics; the average the run uses is the main process's, copied to the others before each use
(:meth:`ModelEma.synchronize`), and the main process saves it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

#: the average, saved into every checkpoint
EMA_FILE = "model_ema.safetensors"
_GENERATOR_KEY = "__stochastic_rounding_generator__"


class _StateHolder(nn.Module):
    """A module whose ``state_dict`` is a copy of another's, entry for entry (what ModelEmaV3 averages)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = list(state)
        for i, tensor in enumerate(state.values()):  # parameters: ModelEmaV3 reads the device of the first one
            self.register_parameter(f"t{i}", nn.Parameter(tensor.detach().clone(), requires_grad=False))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The held tensors under the model's own names."""
        return dict(zip(self.names, self.state_dict().values(), strict=True))


class ModelEma(TrainerCallback):
    """The moving average of ``model``'s state, updated after every optimizer step, saved with every checkpoint."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = False) -> None:
        self.model = model
        self.decay, self.warmup = float(decay), bool(warmup)
        self._ema: ModelEmaV3 | None = None

    @property
    def ema(self) -> ModelEmaV3:
        """The timm average, started on first use from the model's state where the Trainer placed it (its device)."""
        if self._ema is None:
            self._ema = ModelEmaV3(_StateHolder(self.model.state_dict()), decay=self.decay, use_warmup=self.warmup)
        return self._ema

    @property
    def holder(self) -> _StateHolder:
        """The averaged tensors (ModelEmaV3's module)."""
        module = self.ema.module
        assert isinstance(module, _StateHolder), "built over a _StateHolder in __init__"
        return module

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged state under the model's names."""
        return self.holder.tensors()

    def current_decay(self, step: int) -> float:
        """The decay the update after optimizer step ``step`` uses (0 at step 1: a copy of the weights)."""
        return float(self.ema.get_decay(step))

    @torch.no_grad()
    def load_into(self, model: nn.Module | None = None) -> None:
        """Copy the averaged state into ``model`` (default: the model it averages)."""
        target = model if model is not None else self.model
        for name, value in target.state_dict().items():
            value.copy_(self.state()[name])

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged state inside the block, its own after it."""
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.synchronize()
        self.load_into()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in self.model.state_dict().items():
                    value.copy_(own[name])

    @torch.no_grad()
    def synchronize(self) -> None:
        """Every process holds the main process's average (DDP: BatchNorm statistics differ per process)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in self.state().values():
                torch.distributed.broadcast(tensor, src=0)

    # --- checkpoints ---------------------------------------------------------------------------------
    def save(self, folder: str) -> None:
        """Write the average (and the rounding generator's state) into ``folder``."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in self.state().items()}
        tensors[_GENERATOR_KEY] = self.ema._sr_generator.get_state()
        meta = {"decay": json.dumps(self.decay), "warmup": json.dumps(self.warmup)}
        save_file(tensors, os.path.join(folder, EMA_FILE), metadata=meta)

    @torch.no_grad()
    def restore_from(self, checkpoint: str | None) -> None:
        """Continue the average saved in ``checkpoint`` (a resume); a run that starts afresh starts from its weights."""
        if not checkpoint:
            return
        path = os.path.join(checkpoint, EMA_FILE)
        if not os.path.isfile(path):
            from hf_transfer.errors import TransferConfigError

            raise TransferConfigError(
                f"model_ema: {checkpoint} holds no {EMA_FILE}, so the moving average cannot continue; resume from a "
                "checkpoint of a run with --model_ema true."
            )
        from safetensors.torch import load_file

        saved = load_file(path)
        self.ema._sr_generator.set_state(saved.pop(_GENERATOR_KEY))
        for name, value in self.state().items():
            value.copy_(saved[name])

    # --- TrainerCallback events ------------------------------------------------------------------------
    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.ema.update(self.model, step=state.global_step)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.synchronize()
        if state.is_world_process_zero and args.output_dir is not None:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                self.save(folder)
