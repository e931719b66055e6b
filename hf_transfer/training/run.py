"""One transfer run from arguments to a Hub-ready output folder.

Order matters for the user: everything that can be wrong with the input (dataset specs, columns,
labels, backbone id, method and its options) is checked before the first training step; outputs
are written by the main process only, after the metrics are gathered from every process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers
from transformers import TrainerCallback, TrainingArguments, set_seed

from hf_transfer import __version__
from hf_transfer.config import TransferArguments, push_repo_id, report_to_problem
from hf_transfer.data.align import align_domains
from hf_transfer.data.classes import select_classes
from hf_transfer.data.load import load_domain
from hf_transfer.data.spec import parse_dataset_spec
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.metrics import (
    classification_report,
    model_selection,
    scalar_metrics_fn,
    unscored_classes,
    unscored_message,
)
from hf_transfer.evaluation.run_health import remove_stop_marker
from hf_transfer.models.backbones import load_backbone
from hf_transfer.models.export import export_model
from hf_transfer.models.speed import busy_machine_note, resolve_cpu_threads, set_memory_format, use_channels_last
from hf_transfer.runtime.folder_lock import FolderInUseError, FolderLock, lock_folder
from hf_transfer.training.checkpoints import resolve_resume
from hf_transfer.training.lr_find import apply_range_test
from hf_transfer.training.modes import TransferData, get_mode
from hf_transfer.training.modes.common import eval_splits
from hf_transfer.training.run_folder import (
    RunIdentityCallback,
    check_output_dir,
    clear_previous_outputs,
    released_on_failure,
    require_same_run,
    run_identity,
    write_identity,
)
from hf_transfer.training.trainer import TransferTrainer

logger = logging.getLogger(__name__)


def _load_checked(spec, args: TransferArguments, seed: int, role: str, skipped: dict[str, int]):
    """One domain, with load errors that name the dataset; ``skipped["<role>/<split>"]`` counts the
    rows dropped by ``--skip_bad_images``."""
    counts: dict[str, int] = {}
    try:
        domain = load_domain(
            spec, args.image_column, args.label_column, seed=seed, skip_bad_images=args.skip_bad_images, skipped=counts
        )
    except TransferConfigError:
        raise
    except (ValueError, OSError, KeyError) as err:  # e.g. datasets' "Instruction 'test' corresponds to no data"
        raise TransferConfigError(
            f"{role} dataset {spec.display_name!r} could not be loaded: {type(err).__name__}: {err}"
        ) from err
    skipped.update({f"{role}/{split}": n for split, n in counts.items() if n})
    return domain


def load_transfer_data(args: TransferArguments, seed: int) -> TransferData:
    target_spec = parse_dataset_spec(args.target)
    source_spec = parse_dataset_spec(args.source) if args.source else None
    skipped: dict[str, int] = {}
    target = select_classes(_load_checked(target_spec, args, seed, "target", skipped), args.target_classes)
    if source_spec is None:
        names = target["train"].features["label"].names
        return TransferData(
            target=target, label_names=list(names), target_name=target_spec.display_name, skipped_images=skipped
        )
    source = _load_checked(source_spec, args, seed, "source", skipped)
    aligned = align_domains(source, target, policy=args.label_policy)
    return TransferData(
        target=aligned.target,
        source=aligned.source,
        label_names=aligned.label_names,
        alignment=aligned.report,
        source_name=source_spec.display_name,
        target_name=target_spec.display_name,
        skipped_images=skipped,
    )


@dataclass
class PushRequest:
    """``--push_to_hub`` and its settings, taken OUT of the TrainingArguments before the Trainer sees them.

    The Trainer pickles its TrainingArguments into every ``checkpoint-*/training_args.bin``, so a
    ``--hub_token`` left there is written to disk in plaintext; and with ``push_to_hub`` set it creates
    the Hub repo when training STARTS (an empty repo if the run then fails). hf_transfer pushes the
    finished folder itself (:func:`hf_transfer.hub.push.push_run`), so the Trainer gets neither."""

    repo_id: str
    private: bool | None
    revision: str | None
    create_pr: bool
    token: str | None

    @classmethod
    def take_from(cls, args: TransferArguments, training_args) -> PushRequest | None:
        token, training_args.hub_token = training_args.hub_token, None
        repo_id = push_repo_id(args, training_args)  # checked by plan_run already, with the same function
        if repo_id is None:
            return None
        training_args.push_to_hub = False
        return cls(repo_id, training_args.hub_private_repo, training_args.hub_revision, args.hub_create_pr, token)


def _resume_checkpoint(args: TransferArguments, training_args, identity: dict) -> str | None:
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume is not None:
        require_same_run(resume, identity)
    return resume


def _lock_output_dir(output_dir: str) -> FolderLock | None:
    """The main process locks the folder for the whole run; every process learns whether it could, so that
    a refused launch ends on all its ranks with the same error (the other ranks never lock: one lock per run)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    lock, refusal = None, None
    if state.is_main_process and not os.path.isfile(output_dir):  # a file: check_output_dir says so
        try:
            lock = lock_folder(output_dir, "hf-transfer train")
        except FolderInUseError as err:
            refusal = str(err)
    if state.num_processes > 1:
        refusal = broadcast_object_list([refusal], from_process=0)[0]
    if refusal is not None:
        raise FolderInUseError(refusal)
    return lock


def _claim_output_dir(args: TransferArguments, training_args, identity: dict, resume: str | None) -> FolderLock | None:
    """Lock the output folder (main process; returned, held until the run ends), check it on every process,
    then (main process) clear it if asked and record the run."""
    from accelerate import PartialState

    output_dir = training_args.output_dir
    lock = _lock_output_dir(output_dir)
    try:
        resuming_here = resume is not None and os.path.abspath(
            os.path.dirname(os.path.normpath(resume))
        ) == os.path.abspath(output_dir)
        stale = check_output_dir(output_dir, identity, resume=resuming_here, overwrite=args.overwrite_output_dir)
        state = PartialState()
        state.wait_for_everyone()
        if state.is_main_process:
            clear_previous_outputs(output_dir, stale)
            write_identity(output_dir, identity)
        state.wait_for_everyone()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _prepare_training_args(training_args) -> None:
    # the mode's datasets are tensors already; the Trainer must not drop "unused" columns
    training_args.remove_unused_columns = False
    training_args.label_names = ["labels"]
    # hf_transfer pushes the finished folder in one commit (hub.push_run); the Trainer's own
    # per-checkpoint pushes would add "Training in progress" commits and checkpoint litter
    training_args.hub_strategy = "end"
    if training_args.device.type == "cpu":  # pinned memory needs an accelerator; torch warns on every loader
        training_args.dataloader_pin_memory = False
    if training_args.ddp_find_unused_parameters is None:
        # the Trainer turns it on for any model that is not a PreTrainedModel (ours), which costs a graph
        # walk per step and warns on every DDP run; every trainable parameter of a mode gets a gradient
        training_args.ddp_find_unused_parameters = False


def final_metrics(trainer, eval_sets: dict, num_classes: int) -> dict[str, dict]:
    """Full metrics per domain (gathered across processes by ``predict``); a model whose outputs are not
    finite stops the run (:class:`~hf_transfer.training.health_guard.HealthGuard`) instead of being scored."""
    import numpy as np

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
        out[name] = classification_report(logits.argmax(-1), pred.label_ids, num_classes)
    return out


def health_report(trainer, metrics: dict, num_classes: int, fallback_train_loss: float) -> dict:
    """results.json's ``train_loss`` (the whole run's mean, across resumes), the steps it covers, and
    ``health``: the loss at the start and end of the run and the divergence warnings (also logged)."""
    from hf_transfer.evaluation.run_health import divergence_warnings, window_means

    guard = trainer.health
    loss = guard.train_loss()
    ends = window_means(guard.first_losses, list(guard.last_losses), guard.loss_steps)
    warnings = divergence_warnings(*(ends or (None, None)), metrics.get("target"), num_classes)
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


EXAMPLES_DIR = "examples"
REFERENCE_PREDICTIONS = "reference_predictions.json"


def example_file_name(index: int, label: str) -> str:
    """``examples/<index>_<label>.png`` with the label reduced to ``[A-Za-z0-9_-]``: a label is data, and
    ``a/b``, ``..`` or ``c:\\d`` must never become a path (the index keeps the names unique)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(label)).strip("_")[:64]
    return f"{EXAMPLES_DIR}/{index}_{stem or 'label'}.png"


@torch.no_grad()
def write_reference_predictions(backbone, target_test, output_dir: str, k: int = 4) -> list[dict]:
    """A few labelled target test images (the card's widget examples) and the trained model's
    predictions on them, so that a later round-trip check can prove the exported folder predicts the same."""
    from PIL import Image

    from hf_transfer.data.images import to_rgb
    from hf_transfer.data.transforms import eval_transform

    model = backbone.model.eval()
    device = next(model.parameters()).device
    transform = eval_transform(backbone.data_config)
    os.makedirs(os.path.join(output_dir, EXAMPLES_DIR), exist_ok=True)
    label_feature = target_test.features["label"]
    labelled = [i for i, y in enumerate(target_test["label"]) if y is not None and y >= 0][:k]
    rows = []
    for i in labelled:
        item = target_test[i]
        image = to_rgb(item["image"])
        label = label_feature.int2str(item["label"])
        name = example_file_name(len(rows), label)
        Image.Image.save(image, os.path.join(output_dir, name))
        reloaded = Image.open(os.path.join(output_dir, name)).convert("RGB")  # predict on the saved bytes
        probs = model(pixel_values=transform(reloaded)[None].to(device)).logits.softmax(-1)[0].cpu()
        rows.append(
            {"file": name, "label": label, "scores": {backbone.label_names[j]: float(p) for j, p in enumerate(probs)}}
        )
    with open(os.path.join(output_dir, REFERENCE_PREDICTIONS), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


def non_default_arguments(args: TransferArguments, training_args) -> dict:
    """The arguments that differ from their defaults: a config that reproduces the run.

    Compared against default instances built the same way, so values normalised in
    ``__post_init__`` (enums, ``report_to``, ...) compare equal when the user did not set them."""
    import dataclasses

    from transformers import TrainingArguments

    skip = {
        "output_dir",
        "resume_from_checkpoint",
        "push_to_hub",
        "hub_model_id",
        "label_names",
        "remove_unused_columns",
        "hub_strategy",
        "logging_dir",
        "ranking",  # a path on this machine; what it says is in results["ranking"]
    }
    default_transfer = TransferArguments(
        mode=args.mode, backbone=args.backbone, target=args.target, source=args.source, method=args.method
    )
    default_training = TrainingArguments(output_dir=training_args.output_dir, use_cpu=training_args.use_cpu)
    out = {}
    for obj, default in ((args, default_transfer), (training_args, default_training)):
        for f in dataclasses.fields(obj):
            if not f.init or f.name in skip or "token" in f.name:
                continue
            value, base = getattr(obj, f.name), getattr(default, f.name, None)
            if f.name in ("mode", "backbone", "target", "source", "method") or repr(value) != repr(base):
                value = getattr(value, "value", value)
                out[f.name] = (
                    value if isinstance(value, (int, float, str, bool, list, dict, type(None))) else str(value)
                )
    if args.lr_find:  # the range test's pick is a result, not an argument: "auto" reproduces (and identifies) it
        out["learning_rate"] = "auto"
    return out


def versions() -> dict[str, str]:
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


@dataclass
class PreparedRun:
    """Everything a run needs, checked and built, before the first training step."""

    args: TransferArguments
    training_args: TrainingArguments
    data: TransferData
    backbone: object
    mode: object
    model: object
    eval_sets: dict
    trainer: TransferTrainer
    resume: str | None
    push: PushRequest | None = None
    ranking: dict | None = None  # --ranking: the ranking that chose this backbone (the card's "Why this backbone")
    # the output folder's lock (main process; None on the others): held until run_transfer's last write
    folder_lock: FolderLock | None = None
    identity: dict | None = None  # what run_identity.json records (released again if the run fails: run_folder)


def prepare_run(
    args: TransferArguments, training_args: TrainingArguments, callbacks: list[TrainerCallback] | None = None
) -> PreparedRun:
    """Load and check data, backbone and method; build the mode and the Trainer (no training yet).

    What can be checked without loading anything (options, method, dataset specs, backbone id form,
    the output folder, the Hub repo id) is checked first."""
    from hf_transfer.plan import plan_run
    from hf_transfer.runtime.logs import quiet_unactionable_logs

    quiet_unactionable_logs(http=False)
    plan = plan_run(args, training_args)  # every check plan makes: train refuses what plan refuses, and back
    if problem := report_to_problem(training_args):  # plan reports it as a problem of this machine
        raise TransferConfigError(problem)
    push = PushRequest.take_from(args, training_args)
    _prepare_training_args(training_args)
    identity = run_identity(args, training_args)
    resume = _resume_checkpoint(args, training_args, identity)
    if resume and args.input_path == "stock":
        logger.warning(
            "Resuming with --input_path stock: the per-sample PIL augmentation draws from the global "
            "RNG in the loader, so the resumed run sees other crops than an uninterrupted one and its "
            "final numbers differ. Use --input_path fast (the default) for an exact resume."
        )
    folder_lock = _claim_output_dir(args, training_args, identity, resume)
    try:
        with released_on_failure(training_args.output_dir, identity):
            run = _build_run(args, training_args, callbacks, identity, resume, push, plan["ranking"])
    except BaseException:
        if folder_lock is not None:
            folder_lock.release()
        raise
    run.folder_lock = folder_lock
    return run


def _build_run(
    args: TransferArguments,
    training_args: TrainingArguments,
    callbacks: list[TrainerCallback] | None,
    identity: dict,
    resume: str | None,
    push: PushRequest | None,
    ranking: dict | None,
) -> PreparedRun:
    """Data, backbone, mode and Trainer, once the output folder is this run's."""
    threads, threads_from = resolve_cpu_threads(
        args.cpu_threads,
        args.input_path,
        training_args.dataloader_num_workers,
        int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1),
    )
    torch.set_num_threads(threads)
    if threads_from != "OMP_NUM_THREADS" and (note := busy_machine_note(threads)):
        logger.warning(note)
    set_seed(training_args.seed)
    if args.mode == "domain" and args.adabn and not args.bottleneck_dim:  # before any data is loaded
        from hf_transfer.models.norm_layers import architecture_without_weights
        from hf_transfer.training.modes.domain_parts import refuse_adabn_without_batchnorm

        architecture = architecture_without_weights(args.backbone, args.backbone_revision, args.trust_remote_code)
        refuse_adabn_without_batchnorm(args, architecture, args.backbone)
    data = load_transfer_data(args, training_args.seed)
    if data.alignment is not None:
        logger.info(data.alignment.summary())
    backbone = load_backbone(
        args.backbone,
        data.label_names,
        revision=args.backbone_revision,
        image_size=args.image_size,
        crop_pct=args.crop_pct,
        trust_remote_code=args.trust_remote_code,
    )
    if backbone.library == "transformers":  # the processor the export will write gives the eval pixels: or stop now
        from hf_transfer.models.served_processor import served_processor

        served_processor(backbone.model_id, backbone.revision, backbone.data_config)
    # before the mode is built: the feature mode extracts in build_model, with this memory format
    channels_last = use_channels_last(args.channels_last, backbone.model, training_args.device)
    if channels_last:
        set_memory_format(backbone.model, True)
    mode = get_mode(args.mode)(args, backbone, data, training_args)
    warn_unscored_classes(eval_splits(mode), data.label_names)
    model = mode.build_model()
    model.channels_last = channels_last
    eval_sets = mode.eval_datasets()
    trainer = TransferTrainer(
        model=model,
        args=training_args,
        train_dataset=mode.train_dataset(),
        eval_dataset={**eval_sets, **mode.unlabelled_eval_datasets()},
        data_collator=mode.collate,
        compute_metrics=scalar_metrics_fn(len(data.label_names)),
        transfer_mode=mode,
        callbacks=[*(callbacks or []), *mode.callbacks(), RunIdentityCallback(identity)],
    )
    return PreparedRun(
        args, training_args, data, backbone, mode, model, eval_sets, trainer, resume, push, ranking, identity=identity
    )


def warn_unscored_classes(splits: dict, label_names: list[str]) -> dict[str, list[str]]:
    """Say, before training, which classes no evaluated test row belongs to (``{domain: names}``, also returned)."""
    out = {}
    for domain, ds in splits.items():
        present = set(np.unique(np.asarray(ds["label"], dtype=np.int64)).tolist())
        missing = [name for i, name in enumerate(label_names) if i not in present]
        if missing:
            out[domain] = missing
            logger.warning(unscored_message(f"{domain} test", missing, len(label_names)))
    return out


def run_transfer(
    args: TransferArguments, training_args: TrainingArguments, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Train under ``args.mode`` and write the Hub-ready folder; returns the results dict."""
    start = time.time()
    run = prepare_run(args, training_args, callbacks)
    with run.folder_lock or contextlib.nullcontext():  # until the last write (export, card, push); errors too
        with released_on_failure(training_args.output_dir, run.identity):
            return _train_and_write(run, start)


def _train_and_write(run: PreparedRun, start: float) -> dict[str, Any]:
    """Train, gather the metrics, then (main process) export, card and push."""
    from hf_transfer.hub.card_provenance import run_provenance

    args, training_args = run.args, run.training_args
    trainer, mode, model, backbone, data, eval_sets = (
        run.trainer,
        run.mode,
        run.model,
        run.backbone,
        run.data,
        run.eval_sets,
    )
    resume = run.resume
    lr_find = None
    if args.lr_find:
        lr_find = apply_range_test(trainer, training_args.output_dir, bool(resume), trainer.is_world_process_zero())
    gap_before = mode.domain_gap()
    train_output = trainer.train(resume_from_checkpoint=resume)
    mode.finish(model, trainer)
    trainer.health.check(trainer.state, backbone.model, " and the mode's finishing step (e.g. AdaBN, head copy)")
    metrics = final_metrics(trainer, eval_sets, len(data.label_names))
    if model.channels_last:  # exports and reference predictions from plain contiguous weights
        set_memory_format(backbone.model, False)
    gap_after = mode.domain_gap()
    results = {
        **mode.describe(),
        "backbone": args.backbone,
        "backbone_revision": args.backbone_revision,
        "base_model": backbone.base_model_id,
        # where the weights came from, through any local run folders (each one's own base, data and mode)
        "provenance": run_provenance(args.backbone, backbone.base_model_id, args.backbone_revision),
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
        "speed": {
            "input_path": args.input_path,
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
        "domain_gap": {"before": gap_before, "after": gap_after} if gap_before is not None else None,
        **health_report(trainer, metrics, len(data.label_names), train_output.training_loss),
        "train_runtime_s": round(time.time() - start, 2),
        "versions": versions(),
        "log_history": trainer.state.log_history,
        "arguments": non_default_arguments(args, training_args),
        "ranking": run.ranking,
        "lr_find": lr_find.to_dict() if lr_find else None,
    }
    if getattr(mode, "solver_info", None):  # head_solver=lbfgs: the Trainer's optimizer settings did not apply
        results["hyperparameters"] = mode.solver_hyperparameters(results["hyperparameters"])
    if trainer.is_world_process_zero():
        remove_stop_marker(training_args.output_dir)  # this run, resumed, finished healthy
        results["base_model_evaluation"] = base_model_evaluation(run, metrics)
        if getattr(mode, "exports_adapter", False):  # LoRA: the --publish form (merged model, adapter)
            results["adapter"] = mode.export(training_args.output_dir, results)
        else:
            export_model(backbone, training_args.output_dir, results=results)
        write_reference_predictions(backbone, data.target["test"], training_args.output_dir)
        # the folder is Hub-ready as it is: README.md card + its figures (a later push re-renders them)
        from hf_transfer.hub.cards import write_card

        # no push requested: a local card, with no links into a repo that does not exist (yet)
        write_card(training_args.output_dir, run.push.repo_id if run.push else None)
        logger.info("Wrote %s and its model card README.md", os.path.join(training_args.output_dir, "results.json"))
    trainer.accelerator.wait_for_everyone()
    if run.push is not None and trainer.is_world_process_zero():
        from hf_transfer.hub.push import push_run

        push_run(
            training_args.output_dir,
            run.push.repo_id,
            private=run.push.private,
            revision=run.push.revision,
            create_pr=run.push.create_pr,
            token=run.push.token,
        )
    return results


def base_model_evaluation(run: PreparedRun, metrics: dict) -> dict | None:
    """The base checkpoint with its own head on the run's target test rows (the card's "before" beside
    "after"): one batched pass, main process only; None when its class names do not overlap the target's."""
    from hf_transfer.data.kshot import subset
    from hf_transfer.evaluate import evaluate_base

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
    m = results["metrics"]
    parts = [f"{dom} acc {v['accuracy']:.4f} (macro-F1 {v['macro_f1']:.4f})" for dom, v in m.items()]
    return f"{results['mode']}/{results['method']}: " + ", ".join(parts)
