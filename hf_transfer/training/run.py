"""One transfer run from arguments to a Hub-ready output folder, as a sequence of stages (each in its layer):

check the arguments (:mod:`~hf_transfer.training.plan`) -> claim the output folder
(:mod:`~hf_transfer.training.run_folder`) -> load and align the data (:mod:`~hf_transfer.training.run_data`)
-> build the mode and the Trainer (:mod:`~hf_transfer.training.build`) -> train and score
(:mod:`~hf_transfer.training.fit`) -> record (:mod:`~hf_transfer.training.results`) -> export
(:mod:`hf_transfer.models.export`, :mod:`hf_transfer.models.examples`) -> card (:mod:`hf_transfer.hub.cards`)
-> push (:mod:`hf_transfer.hub.push`).

Order matters for the user: everything that can be wrong with the input (dataset specs, columns,
labels, backbone id, method and its options) is checked before the first training step; outputs
are written by the main process only, after the metrics are gathered from every process. The caller's
TrainingArguments are never changed: the run works on its own copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from hf_transfer.config import TransferArguments, report_to_problem
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.run_health import remove_stop_marker
from hf_transfer.methods import registry
from hf_transfer.models.examples import write_reference_predictions
from hf_transfer.models.export import export_model
from hf_transfer.runtime.logs import quiet_unactionable_logs
from hf_transfer.training.build import PreparedRun, build_run, refuse_before_loading, set_up_process
from hf_transfer.training.fit import TrainedRun, train_run
from hf_transfer.training.modes.task import TaskMode
from hf_transfer.training.plan import plan_run
from hf_transfer.training.results import base_model_evaluation, collect_results
from hf_transfer.training.run_arguments import run_output_dir, run_training_args
from hf_transfer.training.run_data import load_transfer_data
from hf_transfer.training.run_folder import claim_output_dir, released_on_failure, resume_checkpoint, run_identity

logger = logging.getLogger(__name__)


def prepare_run(
    args: TransferArguments, training_args: TrainingArguments, callbacks: list[TrainerCallback] | None = None
) -> PreparedRun:
    """Check the arguments, claim the output folder, load the data, build the mode and the Trainer.

    No training yet; what can be checked without loading anything is checked first."""
    quiet_unactionable_logs(http=False)
    plan = plan_run(args, training_args)  # every check plan makes: train refuses what plan refuses, and back
    if problem := report_to_problem(training_args):  # plan reports it as a problem of this machine
        raise TransferConfigError(problem)
    training_args, push = run_training_args(args, training_args)  # the run's own copy
    if training_args.ddp_find_unused_parameters is None:
        # the Trainer turns it on for any model that is not a PreTrainedModel (ours), which costs a graph
        # walk per step and warns on every DDP run: on only for a method that declares a backward pass
        # leaving trainable parameters without a gradient (e.g. MCD's step B)
        assert args.method is not None, "TransferArguments.__post_init__ fills in the mode's default method"
        training_args.ddp_find_unused_parameters = registry.get_method(args.method, args.mode).find_unused_parameters
    identity = run_identity(args, training_args)
    resume = resume_checkpoint(training_args, identity)
    if resume and args.input_path == "stock":
        logger.warning(
            "Resuming with --input_path stock: the per-sample PIL augmentation draws from the global "
            "RNG in the loader, so the resumed run sees other crops than an uninterrupted one and its "
            "final numbers differ. Use --input_path fast (the default) for an exact resume."
        )
    folder_lock = claim_output_dir(training_args, identity, resume, overwrite=args.overwrite_output_dir)
    try:
        with released_on_failure(run_output_dir(training_args), identity):
            set_up_process(args, training_args)
            refuse_before_loading(args)
            data = load_transfer_data(args, training_args.seed)
            run = build_run(args, training_args, data, callbacks, identity, resume, push, plan["ranking"])
    except BaseException:
        if folder_lock is not None:
            folder_lock.release()
        raise
    run.folder_lock = folder_lock
    return run


def run_transfer(
    args: TransferArguments, training_args: TrainingArguments, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Train under ``args.mode`` and write the Hub-ready folder; returns the results dict."""
    start = time.time()
    run = prepare_run(args, training_args, callbacks)
    with run.folder_lock or contextlib.nullcontext():  # until the last write (export, card, push); errors too
        assert run.identity is not None, "build_run records the run's identity"
        with released_on_failure(run.output_dir, run.identity):
            trained = train_run(run)
            results = collect_results(run, trained, start, _provenance(run))
            if run.trainer.is_world_process_zero():
                write_outputs(run, trained, results)
            run.trainer.accelerator.wait_for_everyone()
            if run.push is not None and run.trainer.is_world_process_zero():
                push(run)
    return results


def _provenance(run: PreparedRun) -> list[dict]:
    """Where the weights came from, through any local run folders (each one's own base, data and mode)."""
    from hf_transfer.hub.card_provenance import run_provenance

    return run_provenance(run.args.backbone, run.backbone.base_model_id, run.args.backbone_revision)


def write_outputs(run: PreparedRun, trained: TrainedRun, results: dict) -> None:
    """Write the base model's "before" row, the export, the example images and the model card (main process)."""
    from hf_transfer.hub.cards import write_card

    output_dir = run.output_dir
    remove_stop_marker(output_dir)  # this run, resumed, finished healthy
    results["base_model_evaluation"] = base_model_evaluation(run, trained.metrics)
    baseline_folder = source_only_folder(output_dir, results)
    baseline = None
    if baseline_folder is not None:  # a source-only run beside this one: the card compares, checks negative transfer
        from hf_transfer.evaluation.negative_transfer import negative_transfer
        from hf_transfer.hub.card_baseline import read_results

        baseline = read_results(baseline_folder)
        results["negative_transfer"] = negative_transfer(results, baseline)
        results["negative_transfer_baseline"] = os.path.relpath(baseline_folder, output_dir)
    if isinstance(run.mode, TaskMode) and run.mode.exports_adapter:  # LoRA: the --publish form (merged model, adapter)
        results["adapter"] = run.mode.export(output_dir, results)
    else:
        export_model(run.backbone, output_dir, results=results)
    write_reference_predictions(run.backbone, run.data.target["test"], output_dir)
    # the folder is Hub-ready as it is: README.md card + its figures (a later push re-renders them); with no push
    # requested, a local card with no links into a repo that does not exist (yet)
    write_card(output_dir, run.push.repo_id if run.push else None, baseline_results=baseline)
    logger.info("Wrote %s and its model card README.md", os.path.join(output_dir, "results.json"))


def source_only_folder(output_dir: str, results: dict) -> str | None:
    """The source-only run beside this domain-adaptation run (same source, target, labels, seed), if there is one."""
    from hf_transfer.hub.card_baseline import needs_baseline, source_only_baseline

    if not needs_baseline(results):
        return None
    found = source_only_baseline(output_dir, results)
    return str(found) if found is not None else None


def push(run: PreparedRun) -> None:
    """Push the finished folder to the Hub in one commit, as ``--push_to_hub`` asked (main process)."""
    from hf_transfer.hub.push import push_run

    request = run.push
    if request is None:
        raise ValueError("push: this run was not asked to push (no --push_to_hub)")
    push_run(
        run.output_dir,
        request.repo_id,
        private=request.private,
        revision=request.revision,
        create_pr=request.create_pr,
        token=request.token,
    )
