"""The run's model and Trainer, built once its arguments are checked and its output folder is its own: the process
(CPU threads, seed), the backbone, the mode (:mod:`hf_transfer.training.modes`) and the one Trainer."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from hf_transfer.config import TransferArguments
from hf_transfer.config.checks import backbone_needs, check_backbone_needs
from hf_transfer.data.kshot import subset
from hf_transfer.data.validation import VALIDATION
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.metrics import scalar_metrics_fn, unscored_message
from hf_transfer.methods.finetune.lp_ft import has_probe_head
from hf_transfer.models.backbones import Backbone, check_drop_path, load_backbone
from hf_transfer.models.speed import busy_machine_note, resolve_cpu_threads, set_memory_format, use_channels_last
from hf_transfer.runtime.folder_lock import FolderLock
from hf_transfer.training.checkpoint_selection import ValidatorSelection, run_selection
from hf_transfer.training.model_ema import ModelEma
from hf_transfer.training.modes import TransferData, TransferMode, TransferModel, get_mode
from hf_transfer.training.modes.common import batch_mixing, eval_dataset, eval_splits
from hf_transfer.training.run_arguments import PushRequest, run_output_dir
from hf_transfer.training.run_folder import RunIdentityCallback
from hf_transfer.training.trainer import TransferTrainer

logger = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """Everything a run needs, checked and built, before the first training step."""

    args: TransferArguments
    training_args: TrainingArguments
    data: TransferData
    backbone: Backbone
    mode: TransferMode
    model: TransferModel
    eval_sets: dict[str, torch.utils.data.Dataset]
    trainer: TransferTrainer
    resume: str | None
    push: PushRequest | None = None
    ranking: dict | None = None  # --ranking: the ranking that chose this backbone (the card's "Why this backbone")
    # the output folder's lock (main process; None on the others): held until run_transfer's last write
    folder_lock: FolderLock | None = None
    identity: dict | None = None  # what run_identity.json records (released again if the run fails: run_folder)
    #: the labelled validation split that chooses between weights the run made (EMA, WiSE-FT), or None
    validation_set: torch.utils.data.Dataset | None = None
    #: ``--wise_ft_alpha``: the backbone's starting state (CPU), interpolated with the fine-tuned one after training
    start_state: dict[str, torch.Tensor] | None = None

    @property
    def output_dir(self) -> str:
        """The run's output folder."""
        return run_output_dir(self.training_args)


def set_up_process(args: TransferArguments, training_args: TrainingArguments) -> None:
    """CPU threads (``--cpu_threads``, said when the machine looks busy) and the seed, before anything is loaded."""
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


def refuse_before_loading(args: TransferArguments) -> None:
    """Refuse what the backbone's architecture alone rules out, from its config before any data is loaded.

    E.g. ``--adabn`` without BatchNorm: the needs the options and the method declare; ``--drop_path`` without a
    drop-path setting."""
    if args.drop_path is not None:
        check_drop_path(args.backbone, args.backbone_revision, args.trust_remote_code)
    if backbone_needs(args):
        from hf_transfer.models.norm_layers import architecture_without_weights

        architecture = architecture_without_weights(args.backbone, args.backbone_revision, args.trust_remote_code)
        check_backbone_needs(args, architecture, args.backbone)


def build_run(
    args: TransferArguments,
    training_args: TrainingArguments,
    data: TransferData,
    callbacks: list[TrainerCallback] | None,
    identity: dict,
    resume: str | None,
    push: PushRequest | None,
    ranking: dict | None,
) -> PreparedRun:
    """Backbone, mode, model and Trainer over the run's ``data``."""
    if data.alignment is not None:
        logger.info(data.alignment.summary())
    backbone = load_backbone(
        args.backbone,
        data.label_names,
        revision=args.backbone_revision,
        image_size=args.image_size,
        crop_pct=args.crop_pct,
        trust_remote_code=args.trust_remote_code,
        drop_path=args.drop_path,
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
    model.mixing = batch_mixing(mode)
    eval_sets = mode.eval_datasets()
    validation = validation_set(mode)
    start_state = wise_ft_start(args, backbone)
    model_ema = ModelEma(model, args.model_ema_decay, args.model_ema_warmup) if args.model_ema else None
    selection = checkpoint_selection(args, training_args, model)
    trainer = TransferTrainer(
        model=model,
        args=training_args,
        train_dataset=mode.train_dataset(),
        eval_dataset={
            **eval_sets,
            **mode.unlabelled_eval_datasets(),
            **({VALIDATION: validation} if validation else {}),
        },
        data_collator=mode.collate,
        compute_metrics=scalar_metrics_fn(len(data.label_names)),
        transfer_mode=mode,
        callbacks=[
            *(callbacks or []),
            *mode.callbacks(),
            *([model_ema] if model_ema else []),
            *([selection] if selection else []),
            RunIdentityCallback(identity),
        ],
    )
    trainer.model_ema = model_ema
    trainer.checkpoint_selection = selection
    return PreparedRun(
        args,
        training_args,
        data,
        backbone,
        mode,
        model,
        eval_sets,
        trainer,
        resume,
        push,
        ranking,
        identity=identity,
        validation_set=validation,
        start_state=start_state,
    )


def checkpoint_selection(
    args: TransferArguments, training_args: TrainingArguments, model: TransferModel
) -> ValidatorSelection | None:
    """``--checkpoint_selection``: the callback that keeps the validator's best weights (None: the last weights)."""
    validator = run_selection(args, training_args)
    return None if validator == "last" else ValidatorSelection(model, validator)


def validation_set(mode: TransferMode) -> torch.utils.data.Dataset | None:
    """The evaluation images of the validation split held out for the run's choices (``--max_eval_samples`` of them)."""
    for dsd in (mode.data.target, mode.data.source):
        if dsd is not None and VALIDATION in dsd:
            ds = subset(dsd[VALIDATION], mode.args.max_eval_samples, mode.training_args.seed)
            return eval_dataset(mode, ds)
    return None


def wise_ft_start(args: TransferArguments, backbone: Backbone) -> dict[str, torch.Tensor] | None:
    """``--wise_ft_alpha``: the backbone's starting state, refused when no head at alpha=0 classifies the target.

    That head is LP-FT's probe head (taken at its stage boundary) or the backbone's own when it already had the
    target's classes; a fresh random head has no meaning at alpha=0."""
    if args.wise_ft_alpha is None:
        return None
    if not has_probe_head(args.method) and not backbone.head_pretrained:
        raise TransferConfigError(
            f"wise_ft_alpha={args.wise_ft_alpha!r}: the head at alpha=0 must classify the target's classes, but "
            f"{args.backbone!r} gets a new head here (its own classifier does not have exactly these classes). Use "
            "--method lp_ft (its probe head is the head at alpha=0), or a backbone whose classifier has these classes."
        )
    return {k: v.detach().to("cpu", copy=True) for k, v in backbone.model.state_dict().items()}


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
