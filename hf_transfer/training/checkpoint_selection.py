"""``--checkpoint_selection``: in domain mode, an unsupervised validator picks the weights a run keeps.

Domain adaptation has no target labels to pick a checkpoint with, and its last step is not a safe choice either:
adversarial and self-training losses can drift past their best target accuracy (a collapse late in training is
the usual cause of a bad seed). At every evaluation the run scores its predictions on the unlabelled target
TRAIN images (``eval_target_unlabelled_<validator>``, :mod:`hf_transfer.evaluation.validators`); this callback keeps
a CPU copy of the model's state whenever that score improves, and :meth:`ValidatorSelection.restore` copies the best
one back after training, before the mode's finishing step (AdaBN) and the export. A tie keeps the earlier step, as
:func:`hf_transfer.evaluation.metrics.model_selection` picks.

Exact resume: the best state and every score so far are written into each checkpoint (``selected_state.safetensors``,
by the main process) and read back on resume. Every process holds the same state: the Trainer gathers the
predictions across processes before the validator scores them, so every process sees the same score, and DDP keeps
the weights equal.

The Trainer's own ``load_best_model_at_end`` reloads a saved checkpoint instead, and needs one saved per evaluation;
this keeps the one copy in memory, so it works with ``--save_strategy no``. Written by hand: neither transformers
nor accelerate keeps a best state without saving checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_transfer.config import TransferArguments

logger = logging.getLogger(__name__)

#: the validator auto picks (confident AND diverse predictions: a collapse onto few classes scores low)
AUTO_VALIDATOR = "im"
#: the eval set whose validator scores pick (domain mode's target training images with labels hidden)
UNLABELLED_SET = "target_unlabelled"
SELECTED_FILE = "selected_state.safetensors"


def resolve_selection(selection: str, mode: str, evaluates: bool, ema: bool, trainer_best: bool) -> str:
    """The validator that picks the run's checkpoint, or ``"last"``: what ``auto`` means for this run.

    ``auto`` is the validator in domain mode when the run evaluates during training, and "last" where there is
    nothing to pick from (no evaluation), where another rule picks (``--model_ema`` chooses on the labelled
    validation split; ``--load_best_model_at_end`` reloads the Trainer's best checkpoint), or outside domain mode."""
    if selection != "auto":
        return selection
    return AUTO_VALIDATOR if mode == "domain" and evaluates and not ema and not trainer_best else "last"


def run_selection(args: TransferArguments, training_args: TrainingArguments) -> str:
    """What ``--checkpoint_selection`` resolves to for this run's arguments."""
    return resolve_selection(
        args.checkpoint_selection,
        args.mode,
        evaluates=training_args.eval_strategy != "no",
        ema=args.model_ema,
        trainer_best=bool(training_args.load_best_model_at_end),
    )


class ValidatorSelection(TrainerCallback):
    """The best-scoring state of ``model`` under ``validator`` on the unlabelled target set, kept across evaluations."""

    def __init__(self, model: nn.Module, validator: str) -> None:
        self.model = model
        self.validator = validator
        self.key = f"eval_{UNLABELLED_SET}_{validator}"
        self.scores: list[tuple[int, float]] = []  # (step, score) of every evaluation, in order
        self.best_step: int | None = None
        self.best_score: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        score = (metrics or {}).get(self.key)
        if score is None:
            return
        step, score = int(state.global_step), float(score)
        self.scores.append((step, score))
        if self.best_score is None or score > self.best_score:
            self.best_step, self.best_score = step, score
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def restore(self, last_step: int) -> dict[str, Any]:
        """Copy the best state into the model; what was picked, for results.json and the card."""
        if self.best_state is None or self.best_step is None:
            return {"validator": self.validator, "picked_step": None, "restored": False, "scores": []}
        restored = self.best_step != last_step
        if restored:
            for name, value in self.model.state_dict().items():
                value.copy_(self.best_state[name].to(value.device))
            logger.info(
                "checkpoint_selection=%s: keeping the weights of step %d (score %.4f), not those of step %d",
                self.validator,
                self.best_step,
                self.best_score,
                last_step,
            )
        return {
            "validator": self.validator,
            "picked_step": self.best_step,
            "score": self.best_score,
            "last_step": last_step,
            "last_score": self.scores[-1][1] if self.scores[-1][0] == last_step else None,
            "restored": restored,
            "scores": [list(s) for s in self.scores],
        }

    # --- checkpoints ---------------------------------------------------------------------------------
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.best_state is None or not state.is_world_process_zero or args.output_dir is None:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            from safetensors.torch import save_file

            tensors = {k: v.contiguous() for k, v in self.best_state.items()}
            meta = {"validator": self.validator, "best_step": str(self.best_step), "scores": json.dumps(self.scores)}
            save_file(tensors, os.path.join(folder, SELECTED_FILE), metadata=meta)

    def restore_from(self, checkpoint: str | None) -> None:
        """Continue the selection saved in ``checkpoint`` (a resume); nothing saved yet: nothing was scored."""
        path = os.path.join(checkpoint, SELECTED_FILE) if checkpoint else None
        if path is None or not os.path.isfile(path):
            return
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        if meta.get("validator") != self.validator:
            from hf_transfer.errors import TransferConfigError

            raise TransferConfigError(
                f"checkpoint_selection={self.validator}: {checkpoint} was picking with {meta.get('validator')!r}; "
                f"resume with --checkpoint_selection {meta.get('validator')}."
            )
        self.best_state = load_file(path)
        self.scores = [(int(s), float(v)) for s, v in json.loads(meta["scores"])]
        self.best_step = int(meta["best_step"])
        self.best_score = dict(self.scores)[self.best_step]
