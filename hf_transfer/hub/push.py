"""Round-trip check and push of a finished run folder to the Hub, in one commit.

:func:`push_run` is what ``hf-transfer push OUTPUT_DIR REPO_ID`` and ``--push_to_hub`` on training
call. In order:

0. The repo id is checked (``validate_repo_id``), a folder whose run was stopped for its health (its
   ``run_health.json``, see :mod:`hf_transfer.evaluation.run_health`) is refused naming the step and the loss,
   the folder locked for the whole push (:mod:`hf_transfer.runtime.folder_lock`: a folder a run is still writing is
   refused, naming the run's pid and host) and ``results.json`` read, before any slow step.
1. :func:`check_round_trip`: every form the folder holds (the root with ``pipeline("image-classification")``,
   the Endpoints ``handler.py``, the ``adapter/`` subfolder with PeftModel; fresh objects, from disk only)
   is loaded and its predictions on ``examples/*`` are compared with the trained model's
   (``reference_predictions.json``). On a mismatch, or a NaN/inf score on either side, :class:`RoundTripError`
   says which form, image and label differed, and nothing is uploaded.
2. The repo is created if needed (``exist_ok``), the branch too when ``revision`` is new; the card
   already on the Hub (if any) is read at the branch head.
3. Figures, ``train_config.yaml`` and ``README.md`` are written into the folder; the card is merged
   into the remote one (generated sections replaced, hand-written text kept, see ``card_merge.py``).
4. ONE ``create_commit`` with every file of the folder except Trainer checkpoints, temporary and
   hidden files, pinned to the head it read (``parent_commit``), so a concurrent edit of the card
   is never overwritten. The commit either lands whole or not at all: after a failure the remote is
   as it was, the local folder is intact, and running the same command again completes the push
   (LFS blobs already uploaded are not sent twice). A repo (or branch) created by a push that then
   fails is deleted again, so a failed first push leaves no empty repo; but only while it holds nothing
   but what that creation put there: another writer's commit, branch, tag or pull request keeps it (two
   first pushes at the same moment: the loser never deletes the winner's repo, see ``undo_created``).

Hub failures (401/403/404, 5xx, a server that cannot be reached) end in one :class:`PushError` line
naming the repo, the endpoint and what to do; the client's exception is chained for ``--debug``.

Tokens come from the usual places through huggingface_hub (explicit ``token``, ``HF_TOKEN``, the
``hf auth login`` cache); this module never prints, logs or writes them.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hf_transfer.evaluation.run_health import stop_marker_problem
from hf_transfer.hub import card_inputs, cards
from hf_transfer.hub.card_metadata import base_model_license, declared_base_model
from hf_transfer.hub.hub_repo import PushError, check_repo_id, create_branch, create_repo, hub_errors, undo_created
from hf_transfer.hub.round_trip import DEFAULT_ATOL, check_round_trip, published_forms
from hf_transfer.methods.registry import is_baseline
from hf_transfer.runtime.folder_lock import lock_folder

if TYPE_CHECKING:  # annotations only
    from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

# never pushed: Trainer checkpoints and state, staging/temp files, hidden files, caches
EXCLUDE = (
    "checkpoint-*",
    "runs",
    "wandb",
    "mlruns",
    ".*",
    "__pycache__",
    "*.tmp",
    "*.temp",
    "*.lock",
    "*.partial",
    "*~",
    "*.pyc",
    "training_args.bin",
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
)


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    commit_oid: str
    pr_url: str | None
    files: list[str]
    commit_message: str


# ------------------------------------------------------------------------------------------------
# files and messages
# ------------------------------------------------------------------------------------------------
def _excluded(rel: str) -> bool:
    parts = rel.split("/")
    return any(fnmatch.fnmatch(part, pat) for part in parts for pat in EXCLUDE)


def files_to_push(folder: str | os.PathLike) -> list[str]:
    """Relative paths of every file to commit (sorted); see ``EXCLUDE``. Symlinks are not followed."""
    folder = Path(folder)
    out = []
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        dirs[:] = sorted(d for d in dirs if not _excluded(d) and not os.path.islink(os.path.join(root, d)))
        for name in files:
            rel = name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")
            full = os.path.join(root, name)
            if _excluded(rel) or os.path.islink(full) or not os.path.isfile(full):
                continue
            out.append(rel)
    return sorted(out)


def run_commit_message(results: dict, baseline: dict | None = None) -> tuple[str, str]:
    """The push commit's (summary line, description): mode/method, base, target accuracy vs baseline."""
    mode, method = results.get("mode"), results.get("method")
    base = (
        results.get("base_model")
        or f"{os.path.basename(str(results.get('backbone', '?')).rstrip(os.sep))} (no Hub base)"
    )
    tgt = card_inputs.dataset_info(results.get("target"))
    acc = card_inputs.accuracy(results, "target")
    b = card_inputs.accuracy(baseline, "target")
    line = f"hf-transfer {mode}/{method} on {base}"
    if tgt:
        line += f" -> {tgt['display']}"
    if acc is not None:
        line += f": target acc {100 * acc:.1f}%"
        if b is not None and not is_baseline(method):
            line += f" (source-only {100 * b:.1f}%, {100 * (acc - b):+.1f} pts)"
    src = card_inputs.dataset_info(results.get("source"))
    desc = [
        f"mode: {mode}",
        f"method: {method}",
        f"backbone: {results.get('backbone')}",
        f"base_model: {results.get('base_model')}",
    ]
    if src:
        desc.append(f"source: {src['display']}")
    if tgt:
        desc.append(f"target: {tgt['display']}")
    for domain, m in (results.get("metrics") or {}).items():
        desc.append(
            f"{domain} test accuracy: {m.get('accuracy'):.4f} (macro-F1 {m.get('macro_f1', float('nan')):.4f}, "
            f"n={m.get('num_samples')})"
        )
    if b is not None:
        desc.append(f"source-only baseline target accuracy: {b:.4f}")
    desc.append(f"hf_transfer {(results.get('versions') or {}).get('hf_transfer', '?')}")
    return line, "\n".join(desc)


def _is_main_process() -> bool:
    """Only the main process pushes. Once ``torch.distributed`` is up (a launched training run) accelerate's
    ``PartialState`` says which process this is; before that, creating one would start a process group, so the
    launchers' rank variables say."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        return PartialState().is_main_process
    return all(
        os.environ.get(var, "0") in ("", "0") for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
    )


def _remote_readme(api: HfApi, repo_id: str, revision: str) -> str | None:
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    if not api.file_exists(repo_id, card_inputs.README, revision=revision):
        return None
    try:
        path = api.hf_hub_download(repo_id, card_inputs.README, revision=revision)
    except (EntryNotFoundError, RemoteEntryNotFoundError):
        return None
    return Path(path).read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# push
# ------------------------------------------------------------------------------------------------
def push_run(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | bool | None = None,
    commit_message: str | None = None,
    *,
    baseline_results: str | os.PathLike | dict | None = None,
    upper_bound_results: str | os.PathLike | dict | None = None,
    license: str | None = None,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    allow_local_base: bool = False,
    space_id: str | None = None,
) -> PushResult | None:
    """Check, card and push the run in ``output_dir`` to ``repo_id`` in one commit.

    ``repo_id`` may omit the namespace (the token's user). ``revision``: a branch (created from main
    when new). ``create_pr``: open a pull request instead of committing to the branch. ``license``:
    overrides the one read from the base model's card. ``allow_local_base``: push a LoRA adapter whose base
    is a local folder (refused otherwise: the pushed adapter and its card's code would point at a path on
    this machine). ``space_id``: the demo Space pushed beside it (``push --space``), which the card links to.
    Returns None on non-main processes.
    """
    from huggingface_hub import HfApi

    if not _is_main_process():
        logger.info("Not the main process: not pushing.")
        return None
    check_repo_id(repo_id)
    folder = Path(output_dir)
    stopped = stop_marker_problem(folder)
    if stopped:  # before "no results.json": say why the run has none
        raise PushError(f"{stopped} Nothing was pushed.")
    if not folder.is_dir():
        raise PushError(f"{str(folder)!r} has no {card_inputs.RESULTS_FILE}: not a finished hf-transfer run folder.")
    # the folder's lock (nested when a run pushes its own folder): a push never reads a folder a run is writing
    with lock_folder(folder, "hf-transfer push", create=False):
        if not (folder / card_inputs.RESULTS_FILE).is_file():
            raise PushError(
                f"{str(folder)!r} has no {card_inputs.RESULTS_FILE}: not a finished hf-transfer run folder."
            )
        results = card_inputs.load_results(folder)
        baseline = card_inputs.load_results(baseline_results)
        upper_bound = card_inputs.load_results(upper_bound_results)
        if not allow_local_base:
            _check_adapter_base(folder)
        if check:
            check_round_trip(folder, atol=atol)
            logger.info(
                "Round-trip check passed: every published form (%s) reproduces the trained model's predictions.",
                ", ".join(published_forms(folder)),
            )

        api = HfApi(token=token)
        with hub_errors(api, repo_id):
            repo_id, created = create_repo(api, repo_id, private)
        new_branch = None
        try:
            with hub_errors(api, repo_id):
                if revision:
                    new_branch = create_branch(api, repo_id, revision)
                return _commit_run(
                    api,
                    folder,
                    repo_id,
                    results,
                    baseline,
                    revision=revision,
                    create_pr=create_pr,
                    token=token,
                    commit_message=commit_message,
                    upper_bound=upper_bound,
                    license=license,
                    space_id=space_id,
                )
        except Exception as err:
            leftover = undo_created(api, repo_id, created, new_branch)
            if leftover:
                raise PushError(f"{err} {leftover}") from err
            raise


def _commit_run(
    api: HfApi,
    folder: Path,
    repo_id: str,
    results: dict,
    baseline: dict | None,
    *,
    revision: str | None,
    create_pr: bool,
    token: str | bool | None,
    commit_message: str | None,
    upper_bound: dict | None,
    license: str | None,
    space_id: str | None = None,
) -> PushResult:
    """Card merged with the remote one, then ONE commit pinned to the head that card was read at."""
    from huggingface_hub import CommitOperationAdd, constants

    branch = revision or constants.DEFAULT_REVISION
    head = api.repo_info(repo_id, revision=branch).sha
    existing = _remote_readme(api, repo_id, head) if head else None
    if license is None:
        license = base_model_license(declared_base_model(results), token=token)

    cards.write_card(
        folder,
        repo_id,
        existing=existing,
        results=results,
        baseline_results=baseline,
        upper_bound_results=upper_bound,
        license=license,
        revision=revision,
        endpoint=api.endpoint,
        space_id=space_id,
    )
    paths = files_to_push(folder)
    if not paths:
        raise PushError(f"Nothing to push in {str(folder)!r}.")
    summary, description = run_commit_message(results, baseline)
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in paths]
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or summary,
        commit_description=description,
        revision=branch,
        create_pr=create_pr,
        parent_commit=head,
    )
    logger.info("Pushed %d files to %s (%s)", len(paths), repo_id, info.pr_url or info.commit_url)
    return PushResult(
        repo_id=repo_id,
        revision=info.pr_revision or branch,
        commit_url=info.commit_url,
        commit_oid=info.oid,
        pr_url=info.pr_url,
        files=paths,
        commit_message=commit_message or summary,
    )


def local_adapter_base(folder: str | os.PathLike) -> str | None:
    """The local folder a LoRA adapter in ``folder`` records as its base, if it is one.

    The adapter is at the root, or in ``adapter/`` beside a merged model. None for a Hub base or no adapter (a
    merged-only folder points at no base).
    """
    from hf_transfer.models.adapters import ADAPTER_SUBDIR

    for config in (Path(folder) / "adapter_config.json", Path(folder) / ADAPTER_SUBDIR / "adapter_config.json"):
        if config.is_file():
            base = json.loads(config.read_text()).get("base_model_name_or_path")
            if base and os.path.isabs(base):  # a local base is recorded absolute
                return base
    return None


def _check_adapter_base(folder: Path) -> None:
    base = local_adapter_base(folder)
    if base is not None:
        raise PushError(
            f"The adapter's base is the local folder {base}: pushed, it would load only on this machine. "
            "Train on a Hub id as backbone, or push anyway with --allow_local_base (allow_local_base=True). "
            "Nothing was pushed."
        )
