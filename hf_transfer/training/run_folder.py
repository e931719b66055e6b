"""The output folder belongs to one run: refuse another run's folder, resume only the same run.

transformers 5 dropped ``TrainingArguments.overwrite_output_dir`` and its check, so a second run into
a used folder silently mixed the two: stale ``examples/`` were published with the new model and
``--resume_from_checkpoint last`` continued the OTHER run's checkpoint. This module restores the
convention, with the run's identity written down:

* ``run_identity.json`` (in the folder and in every ``checkpoint-N``) holds the resolved arguments
  that change the run's result (:func:`run_identity`), so a mismatch can name the arguments that differ;
* a folder that holds anything is refused before any work unless the user resumes the SAME run
  (``--resume_from_checkpoint``) or passes ``--overwrite_output_dir true``, which removes the previous
  run's outputs (weights, card, examples, checkpoints, plots) instead of overwriting some of them;
* files hf_transfer does not write are never deleted: a folder holding them is refused (they would
  be pushed to the Hub with the model);
* the folder is locked (:mod:`hf_transfer.runtime.folder_lock`) before it is checked and until the run's last write,
  so two runs started together cannot both find it free: the second is refused, naming the first's pid and
  host. The lock file is not a run output: it is never listed, cleared or counted as "used".
* a run that fails before it wrote anything but its ``run_identity.json`` (a damaged backbone, a wrong
  column, a crash before the first checkpoint) removes that file again (:func:`released_on_failure`): the
  corrected retry, with other arguments, must not be refused as "a different run" over a folder that holds
  nothing of value.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_transfer.config import TransferArguments
from hf_transfer.errors import TransferConfigError
from hf_transfer.evaluation.run_health import HEALTH_FILE
from hf_transfer.runtime.cache import STAGING_PREFIX, write_atomic
from hf_transfer.runtime.folder_lock import LOCK_FILE, FolderInUseError, FolderLock, lock_folder
from hf_transfer.training.checkpoints import IDENTITY_FILE, resolve_resume
from hf_transfer.training.run_arguments import non_default_arguments, run_output_dir

logger = logging.getLogger(__name__)

# everything a run (export, adapters, cards, Trainer checkpoints, trackers) writes into its folder
RUN_OUTPUTS = (
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "results.json",
    IDENTITY_FILE,
    HEALTH_FILE,
    "reference_predictions.json",
    "lr_find.json",
    "examples",
    "checkpoint-*",
    "README.md",
    "*.png",
    "adapter_config.json",
    "adapter_model.safetensors",
    "hf_transfer_adapter.json",
    "merged",
    "adapter",
    "handler.py",
    "requirements.txt",
    "train_config.yaml",
    "training_args.bin",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "runs",
    f"{STAGING_PREFIX}*",
    ".gitattributes",
)

# arguments that do not change the trained weights or the metrics (logging, saving, pushing, caches)
NOT_IDENTITY = {
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "hub_private_repo",
    "hub_revision",
    "hub_strategy",
    "hub_always_push",
    "hub_create_pr",
    "report_to",
    "run_name",
    "project",
    "trackio_space_id",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "logging_nan_inf_filter",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "save_only_model",
    "disable_tqdm",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "decoded_cache_dir",
    "feature_cache_dir",
    "trust_remote_code",
    "debug",
    "skip_memory_metrics",
}


def run_identity(args: TransferArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The resolved arguments that change a run's result (non-default ones only, plus the world size).

    ``dataloader_num_workers`` counts on the stock input path only: there the workers' RNG streams
    draw the augmentation, while the fast path's decode is byte-identical for any worker count."""
    identity = {k: v for k, v in non_default_arguments(args, training_args).items() if k not in NOT_IDENTITY}
    if args.input_path != "stock":
        identity.pop("dataloader_num_workers", None)
    identity["world_size"] = training_args.world_size
    return dict(sorted(identity.items()))


def read_identity(folder: str) -> dict[str, Any] | None:
    """The identity recorded in ``folder`` (None when there is none or it cannot be read)."""
    path = os.path.join(folder, IDENTITY_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_identity(folder: str, identity: dict[str, Any]) -> None:
    """Record ``identity`` in ``folder`` (atomically: a crash never leaves half a file)."""
    write_atomic(os.path.join(folder, IDENTITY_FILE), json.dumps(identity, indent=2, default=str))


def identity_difference(recorded: dict, current: dict) -> list[str]:
    """``name: recorded -> current`` for every argument that differs."""
    keys = sorted(set(recorded) | set(current))
    missing = "<default>"
    return [
        f"{k}: {recorded.get(k, missing)!r} -> {current.get(k, missing)!r}"
        for k in keys
        if json.dumps(recorded.get(k), default=str) != json.dumps(current.get(k), default=str)
    ]


def _is_run_output(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in RUN_OUTPUTS)


def check_output_dir(output_dir: str, identity: dict, *, resume: bool, overwrite: bool) -> list[str]:
    """Refuse a folder that cannot hold this run; return the entries ``--overwrite_output_dir`` will remove.

    Read-only, so every process can call it. Raises :class:`TransferConfigError` naming the folder and,
    for another run's folder, the arguments that differ."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise TransferConfigError(f"output_dir {output_dir!r} is a file, not a folder: choose another output_dir.")
    # the lock this run holds (or one a killed run left) is neither an output nor "another run's" file
    entries = sorted(e for e in os.listdir(output_dir) if e != LOCK_FILE) if os.path.isdir(output_dir) else []
    if not entries:
        if resume:
            raise TransferConfigError(
                f"resume_from_checkpoint: output_dir {output_dir!r} is empty or missing; there is no run to resume."
            )
        return []
    foreign = [e for e in entries if not _is_run_output(e)]
    if foreign:
        raise TransferConfigError(
            f"output_dir {output_dir!r} holds files hf_transfer did not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); they would be published with the model. "
            "Choose an empty or new output_dir."
        )
    if resume:
        require_same_run(output_dir, identity)
        return []
    if overwrite:
        return entries
    recorded = read_identity(output_dir)
    diff = identity_difference(recorded, identity) if recorded is not None else None
    if diff == [] and entries == [IDENTITY_FILE]:  # this run was stopped before it wrote anything: start it again
        return []
    if diff == []:
        what = "this same run"
    elif diff:
        what = f"a different run (arguments that differ, recorded -> now: {'; '.join(diff)})"
    else:
        what = "another run's outputs"
    raise TransferConfigError(
        f"output_dir {output_dir!r} already holds {what}. Continue it with --resume_from_checkpoint last, start over "
        "with --overwrite_output_dir true (removes its weights, card, examples, checkpoints and plots), or choose "
        "another output_dir."
    )


def release_claim(output_dir: str, identity: dict) -> bool:
    """Remove this run's ``run_identity.json`` when the folder holds nothing else (main process); True if it did.

    The folder itself stays (it may be one the user made). A folder with any other entry keeps its identity:
    checkpoints or outputs are resumed or overwritten only with it."""
    from accelerate import PartialState

    if not PartialState().is_main_process or not os.path.isdir(output_dir):
        return False
    recorded = read_identity(output_dir)
    held = [name for name in os.listdir(output_dir) if name != LOCK_FILE]  # the run's own lock is not an output
    if held != [IDENTITY_FILE] or recorded is None or identity_difference(recorded, identity):
        return False
    os.remove(os.path.join(output_dir, IDENTITY_FILE))
    logger.info("The run failed before writing anything: released output_dir %s for the next run.", output_dir)
    return True


@contextmanager
def released_on_failure(output_dir: str, identity: dict) -> Iterator[None]:
    """Run the block; if it raises, :func:`release_claim` (the error goes on unchanged)."""
    try:
        yield
    except BaseException:
        try:
            release_claim(output_dir, identity)
        except OSError as err:  # never hide the run's own error behind this one
            logger.warning("Could not release output_dir %s: %s", output_dir, err)
        raise


def clear_previous_outputs(output_dir: str, entries: list[str]) -> None:
    """Remove the previous run's outputs (only names :data:`RUN_OUTPUTS` matches)."""
    for name in entries:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    if entries:
        logger.info("overwrite_output_dir: removed %d previous output(s) from %s.", len(entries), output_dir)


def require_same_run(folder: str, identity: dict) -> None:
    """A run folder or checkpoint is resumed only by the run that wrote it (its recorded identity)."""
    recorded = read_identity(folder)
    if recorded is None:
        raise TransferConfigError(
            f"resume_from_checkpoint: {folder!r} has no {IDENTITY_FILE}; no hf_transfer run wrote it, so it cannot "
            "be checked against this one. Start over with --overwrite_output_dir true, or another output_dir."
        )
    diff = identity_difference(recorded, identity)
    if diff:
        raise TransferConfigError(
            f"resume_from_checkpoint: {folder!r} was written by a different run; arguments that differ "
            f"(recorded -> now): {'; '.join(diff)}. Resume with the same arguments, or start over with "
            "--overwrite_output_dir true."
        )


class RunIdentityCallback(TrainerCallback):
    """Writes ``run_identity.json`` into every checkpoint the Trainer saves (main process only)."""

    def __init__(self, identity: dict[str, Any]) -> None:
        self.identity = identity

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.is_world_process_zero and args.output_dir is not None:  # the Trainer saves into its output_dir
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                write_identity(folder, self.identity)
        return control


def resume_checkpoint(training_args: TrainingArguments, identity: dict) -> str | None:
    """The checkpoint ``--resume_from_checkpoint`` names (``last``: the newest complete one).

    Refused unless this same run wrote it."""
    resume = resolve_resume(training_args.resume_from_checkpoint, run_output_dir(training_args))
    if resume is not None:
        require_same_run(resume, identity)
    return resume


def lock_output_dir(output_dir: str) -> FolderLock | None:
    """Lock the folder for the whole run (main process); every process learns whether it could.

    So a refused launch ends on all its ranks with the same error (the other ranks never lock: one lock per run)."""
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


def claim_output_dir(
    training_args: TrainingArguments, identity: dict, resume: str | None, *, overwrite: bool
) -> FolderLock | None:
    """Lock the output folder, check it on every process, then clear it if asked and record the run.

    The lock is the main process's (returned, held until the run ends); clearing and recording are the main
    process's too."""
    from accelerate import PartialState

    output_dir = run_output_dir(training_args)
    lock = lock_output_dir(output_dir)
    try:
        resuming_here = resume is not None and os.path.abspath(
            os.path.dirname(os.path.normpath(resume))
        ) == os.path.abspath(output_dir)
        stale = check_output_dir(output_dir, identity, resume=resuming_here, overwrite=overwrite)
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
