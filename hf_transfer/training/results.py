"""What a finished run records: the metrics gathered from every process, ``results.json`` (:func:`collect_results`:
arguments, data, metrics, health, versions), the base model's "before" row and the one-line console summary."""

from __future__ import annotations

import logging
import platform
import time
from typing import Any

import torch
import transformers

from hf_transfer import __version__
from hf_transfer.config.recipe import training_recipe
from hf_transfer.evaluation.metrics import model_selection, unscored_classes
from hf_transfer.training.build import PreparedRun
from hf_transfer.training.fit import TrainedRun
from hf_transfer.training.modes.feature import FeatureMode
from hf_transfer.training.run_arguments import non_default_arguments, run_jpeg_decoder
from hf_transfer.training.trainer import TransferTrainer

logger = logging.getLogger(__name__)


def health_report(trainer: TransferTrainer, metrics: dict, num_classes: int, fallback_train_loss: float) -> dict:
    """The ``train_loss`` of results.json (the whole run's mean, across resumes), its steps, and ``health``.

    ``health``: the loss at the start and end of the run and the divergence warnings (also logged)."""
    from hf_transfer.evaluation.run_health import divergence_warnings, window_means

    guard = trainer.health
    loss = guard.train_loss()
    ends = window_means(guard.first_losses, list(guard.last_losses), guard.loss_steps)
    loss_start, loss_end = ends if ends is not None else (None, None)
    warnings = divergence_warnings(loss_start, loss_end, metrics.get("target"), num_classes)
    for line in warnings:
        logger.warning("Run health: %s", line)
    if loss is None:  # nothing observed (no training step ran)
        covers = None
    else:
        covers = loss.get("note") or f"steps {loss['first_step']}-{loss['last_step']} (the whole run)"
    return {
        "train_loss": loss["mean"] if loss else fallback_train_loss,
        "train_loss_covers": covers,
        "health": {
            "loss_start": ends[0] if ends else None,
            "loss_end": ends[1] if ends else None,
            "warnings": warnings,
        },
    }


def versions() -> dict[str, str]:
    """The versions of hf_transfer, its main libraries and Python, so a run can be reproduced."""
    import accelerate
    import datasets
    import timm

    return {
        "hf_transfer": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def collect_results(run: PreparedRun, trained: TrainedRun, start: float, provenance: list[dict]) -> dict[str, Any]:
    """The content of ``results.json``: what the run was and what it gave.

    What it was: mode, method, data, arguments, versions, ``provenance`` (where its weights came from); what it
    gave: metrics, model selection, domain gap, health, from every process's gathered metrics."""
    args, training_args = run.args, run.training_args
    trainer, mode, model, backbone, data = run.trainer, run.mode, run.model, run.backbone, run.data
    metrics, lr_find = trained.metrics, trained.lr_find
    results = {
        **mode.describe(),
        "backbone": args.backbone,
        "backbone_revision": args.backbone_revision,
        "base_model": backbone.base_model_id,
        "provenance": provenance,
        "source": args.source,
        "target": args.target,
        "source_name": data.source_name,
        "target_name": data.target_name,
        "label_names": data.label_names,
        "label_alignment": data.alignment.to_dict() if data.alignment else None,
        "dropped_unlabelled": data.dropped_unlabelled,
        "skipped_images": data.skipped_images,  # rows dropped by --skip_bad_images, per "<domain>/<split>"
        "unlabelled_target_images_kept": data.kept_unlabelled or None,
        "seed": training_args.seed,
        "data_config": backbone.data_config.to_dict(),
        "augment": args.augment,
        "training_recipe": training_recipe(args, training_args),
        "speed": {
            "input_path": args.input_path,
            # the fast path's decode cache: how it was asked to store images, and what decoded its JPEG entries
            "decode_cache_format": args.decode_cache_format if args.input_path == "fast" else None,
            "jpeg_decoder": run_jpeg_decoder(args, training_args),
            "channels_last": model.channels_last,
            "cpu_threads": torch.get_num_threads(),
            "torch_compile": bool(training_args.torch_compile),
            "mixed_precision": training_args.mixed_precision,
        },
        "hyperparameters": {
            "learning_rate": training_args.learning_rate,
            "backbone_lr_scale": args.backbone_lr_scale,
            "per_device_train_batch_size": training_args.per_device_train_batch_size,
            "world_size": training_args.world_size,
            "max_steps": trainer.state.max_steps,
            "num_train_epochs": training_args.num_train_epochs,
            "weight_decay": training_args.weight_decay,
            "optim": getattr(training_args.optim, "value", str(training_args.optim)),
            "optim_args": training_args.optim_args,
            "lr_scheduler_type": getattr(
                training_args.lr_scheduler_type, "value", str(training_args.lr_scheduler_type)
            ),
            "warmup_steps": training_args.warmup_steps,
            # the values hf_transfer's recipe filled in because the run left them unset (training/defaults.py)
            "recipe_defaults": dict(args.recipe_defaults),
        },
        "metrics": metrics,
        "unscored_classes": {  # classes without a test row: the card names them
            d: names
            for d, m in metrics.items()
            if (names := unscored_classes(m["per_class_accuracy"], data.label_names))
        },
        "model_selection": model_selection(trainer.state.log_history),
        # --checkpoint_selection: the step whose weights were kept, picked without target labels
        "checkpoint_selection": trained.checkpoint_selection,
        "target_unlabelled_scores": trained.target_unlabelled_scores,
        "domain_gap": (
            {"before": trained.gap_before, "after": trained.gap_after} if trained.gap_before is not None else None
        ),
        **health_report(trainer, metrics, len(data.label_names), trained.output.training_loss),
        "train_runtime_s": round(time.time() - start, 2),
        "versions": versions(),
        "log_history": trainer.state.log_history,
        "arguments": non_default_arguments(args, training_args),
        "ranking": run.ranking,
        "lr_find": lr_find.to_dict() if lr_find else None,
        **trained.robust,  # model_ema, wise_ft, validation: the choices made on the validation split
    }
    if (
        isinstance(mode, FeatureMode) and mode.solver_info
    ):  # head_solver=lbfgs: the Trainer's optimizer settings did not apply
        results["hyperparameters"] = mode.solver_hyperparameters(results["hyperparameters"])
    return results


def base_model_evaluation(run: PreparedRun, metrics: dict) -> dict | None:
    """The base checkpoint with its own head on the run's target test rows: the card's "before" beside "after".

    One batched pass, main process only; None when its class names do not overlap the target's."""
    from hf_transfer.data.kshot import subset
    from hf_transfer.evaluation.evaluate import evaluate_base

    args, training_args = run.args, run.training_args
    try:
        return evaluate_base(
            args.backbone,
            subset(run.data.target["test"], args.max_eval_samples, training_args.seed),
            run.backbone.data_config,
            revision=args.backbone_revision,
            after=metrics.get("target"),
            trust_remote_code=args.trust_remote_code,
            batch_size=training_args.per_device_eval_batch_size,
            device=training_args.device,
            input_path=args.input_path,
            decoded_cache_dir=args.decoded_cache_dir,
            progress=False,
        )
    except Exception as err:  # an extra row of the card: it never costs the trained model its export
        logger.warning("The base model's before-adaptation row was not computed: %s: %s", type(err).__name__, err)
        return None


def summarize(results: dict) -> str:
    """One line: the mode, method and accuracy / macro-F1 per domain."""
    m = results["metrics"]
    parts = [f"{dom} acc {v['accuracy']:.4f} (macro-F1 {v['macro_f1']:.4f})" for dom, v in m.items()]
    return f"{results['mode']}/{results['method']}: " + ", ".join(parts)
