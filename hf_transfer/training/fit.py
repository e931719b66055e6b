"""The training stage of a run: the learning-rate range test when asked, the Trainer's loop (resumed when asked),
the choices between the weights it made (EMA, WiSE-FT: :mod:`~hf_transfer.training.robust`), the mode's finishing
step, then the metrics on every evaluated domain, gathered from every process, with the domain gap before and
after."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.trainer_utils import TrainOutput

from hf_transfer.evaluation.metrics import classification_report
from hf_transfer.evaluation.validators import VALIDATORS
from hf_transfer.models.speed import set_memory_format
from hf_transfer.training.build import PreparedRun
from hf_transfer.training.checkpoint_selection import UNLABELLED_SET
from hf_transfer.training.lr_find import RangeTestResult, apply_range_test
from hf_transfer.training.robust import choose_weights
from hf_transfer.training.trainer import TransferTrainer


@dataclass
class TrainedRun:
    """What training gave, before anything is written."""

    output: TrainOutput
    metrics: dict[str, dict]  # per domain: classification_report
    gap_before: dict | None
    gap_after: dict | None
    lr_find: RangeTestResult | None
    #: the choices made after training on the validation split (``model_ema``, ``wise_ft``, ``validation``)
    robust: dict = field(default_factory=dict)
    #: ``--checkpoint_selection``: the evaluation step whose weights the validator kept (None: the last weights)
    checkpoint_selection: dict | None = None
    #: the unsupervised validators of the exported weights on the unlabelled target training images (domain mode)
    target_unlabelled_scores: dict | None = None


def train_run(run: PreparedRun) -> TrainedRun:
    """Train ``run`` and score it; the weights are left in plain (contiguous) memory format for the export."""
    trainer, mode = run.trainer, run.mode
    lr_find = None
    if run.args.lr_find:
        lr_find = apply_range_test(trainer, run.output_dir, bool(run.resume), trainer.is_world_process_zero())
    gap_before = mode.domain_gap()
    output = trainer.train(resume_from_checkpoint=run.resume)
    selection = restore_selected(run)
    robust = choose_weights(run)  # EMA or raw, then WiSE-FT: before the mode's finishing step (e.g. AdaBN)
    mode.finish(run.model, trainer)
    trainer.health.check(trainer.state, run.backbone.model, " and the mode's finishing step (e.g. AdaBN, head copy)")
    metrics = final_metrics(trainer, run.eval_sets, len(run.data.label_names))
    unlabelled = unlabelled_scores(trainer)
    if run.model.channels_last:  # exports and reference predictions from plain contiguous weights
        set_memory_format(run.backbone.model, False)
    return TrainedRun(output, metrics, gap_before, mode.domain_gap(), lr_find, robust, selection, unlabelled)


def restore_selected(run: PreparedRun) -> dict | None:
    """``--checkpoint_selection``: score the last step if no evaluation did, then keep the best-scoring weights."""
    trainer, selection = run.trainer, run.trainer.checkpoint_selection
    if selection is None:
        return None
    step = trainer.state.global_step
    if not selection.scores or selection.scores[-1][0] != step:
        unlabelled = _unlabelled_set(trainer)
        assert unlabelled is not None, "checkpoint_selection is resolved to a validator only with this eval set"
        trainer.evaluate(eval_dataset=unlabelled, metric_key_prefix=f"eval_{UNLABELLED_SET}")
    return selection.restore(step)


def _unlabelled_set(trainer: TransferTrainer) -> torch.utils.data.Dataset | None:
    sets = trainer.eval_dataset if isinstance(trainer.eval_dataset, dict) else {}
    return sets.get(UNLABELLED_SET)


def unlabelled_scores(trainer: TransferTrainer) -> dict[str, float] | None:
    """The validators of the weights as exported (after any finishing step) on the unlabelled target images.

    What the negative-transfer check compares with the source-only run's (:mod:`hf_transfer.evaluation.
    negative_transfer`); None outside domain mode."""
    unlabelled = _unlabelled_set(trainer)
    if unlabelled is None:
        return None
    prefix = f"final_{UNLABELLED_SET}"
    metrics = trainer.predict(unlabelled, metric_key_prefix=prefix).metrics or {}
    return {name: float(metrics[f"{prefix}_{name}"]) for name in VALIDATORS if f"{prefix}_{name}" in metrics}


def final_metrics(
    trainer: TransferTrainer, eval_sets: dict[str, torch.utils.data.Dataset], num_classes: int
) -> dict[str, dict]:
    """Full metrics per domain, gathered across processes by ``predict``.

    A model whose outputs are not finite stops the run (:class:`~hf_transfer.training.health_guard.HealthGuard`)
    instead of being scored."""
    out = {}
    for name, ds in eval_sets.items():
        pred = trainer.predict(ds, metric_key_prefix=f"test_{name}")
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        bad_rows = int((~np.isfinite(logits)).any(axis=-1).sum())
        if bad_rows:
            trainer.health.stop(
                "non-finite outputs",
                trainer.state.global_step,
                float("nan"),
                f"after step {trainer.state.global_step} the model's outputs are not finite on {bad_rows} of "
                f"the {len(logits)} {name} test images",
            )
        labels = pred.label_ids
        assert isinstance(labels, np.ndarray), "the run's label_names is ['labels']: one label array per set"
        out[name] = classification_report(logits.argmax(-1), labels, num_classes)
    return out
