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
   first pushes at the same moment: the loser never deletes the winner's repo, see ``_undo_created``).

Hub failures (401/403/404, 5xx, a server that cannot be reached) end in one :class:`PushError` line
naming the repo, the endpoint and what to do; the client's exception is chained for ``--debug``.

Tokens come from the usual places through huggingface_hub (explicit ``token``, ``HF_TOKEN``, the
``hf auth login`` cache); this module never prints, logs or writes them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from hf_transfer.evaluation.run_health import stop_marker_problem
from hf_transfer.hub import card_inputs, cards
from hf_transfer.hub.card_metadata import base_model_license, declared_base_model
from hf_transfer.runtime.folder_lock import lock_folder

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
DEFAULT_ATOL = 1e-3


class RoundTripError(RuntimeError):
    """The exported folder does not predict what the trained model predicted: nothing was pushed."""


class PushError(RuntimeError):
    """The folder cannot be pushed as it is (not a run folder, nothing to push, ...)."""


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
# round trip
# ------------------------------------------------------------------------------------------------
def _pipeline_kwargs(folder: Path) -> dict:
    """For a LoRA adapter folder, what the model card's stock code passes to pipeline(): this run's image
    processor and, when the base's labels differ, the label kwargs (see hf_transfer.models.adapters)."""
    if not (folder / "adapter_config.json").is_file():
        return {}
    from hf_transfer.models.adapters import stock_pipeline_kwargs

    return stock_pipeline_kwargs(str(folder))


def _pipeline_form(model_dir: Path, device):
    """The folder's root with ``pipeline("image-classification")`` (for an adapter, with its card's arguments)."""
    from transformers import pipeline

    clf = pipeline("image-classification", model=str(model_dir), device=device, **_pipeline_kwargs(model_dir))
    return lambda image, k: clf(image, top_k=k)


def _handler_form(model_dir: Path):
    """The folder's ``handler.py`` as an Inference Endpoint runs it: ``EndpointHandler(dir)({"inputs": image})``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_transfer_checked_handler", model_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(str(model_dir))
    return lambda image, k: handler({"inputs": image, "parameters": {"top_k": k}})


def _subfolder_adapter_form(model_dir: Path, subfolder: str):
    """The adapter in ``subfolder`` as the card loads it: ``PeftModel.from_pretrained(base, repo, subfolder=...)``
    on the base built with the run's labels, preprocessed by the subfolder's own image processor."""
    import torch

    from hf_transfer.models.adapters import ADAPTER_INFO, load_adapter_model, stock_loading

    info = json.loads((model_dir / subfolder / ADAPTER_INFO).read_text())
    model = load_adapter_model(str(model_dir), subfolder=subfolder).eval()
    proc = stock_loading(info)["processor"]
    import transformers

    processor = getattr(transformers, proc["class"]).from_pretrained(str(model_dir / subfolder), **proc["kwargs"])
    labels = info["label_names"]

    def predict(image, k):
        from PIL import Image

        with torch.no_grad():
            x = processor(Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
            probs = model(pixel_values=x).logits.softmax(-1)[0]
        return [{"label": labels[i], "score": float(probs[i])} for i in probs.argsort(descending=True)[:k].tolist()]

    return predict


def published_forms(model_dir: str | os.PathLike) -> list[str]:
    """The forms a run folder holds, each checked by :func:`check_round_trip`: ``model`` or ``adapter`` (the
    root, with pipeline()), ``endpoint handler`` (``handler.py``), ``adapter/`` (the PEFT subfolder)."""
    from hf_transfer.models.adapters import ADAPTER_SUBDIR, HANDLER_FILE

    model_dir = Path(model_dir)
    forms = ["adapter" if (model_dir / "adapter_config.json").is_file() else "model"]
    if (model_dir / HANDLER_FILE).is_file():
        forms.append("endpoint handler")
    if (model_dir / ADAPTER_SUBDIR / "adapter_config.json").is_file():
        forms.append(f"{ADAPTER_SUBDIR}/")
    return forms


def _load_form(form: str, model_dir: Path, device):
    if form == "endpoint handler":
        return _handler_form(model_dir), f"handler.py EndpointHandler({str(model_dir)!r})"
    if form.endswith("/"):
        sub = form.rstrip("/")
        return _subfolder_adapter_form(
            model_dir, sub
        ), f"PeftModel.from_pretrained(base, {str(model_dir)!r}, subfolder={sub!r})"
    return _pipeline_form(model_dir, device), f"pipeline('image-classification', model={str(model_dir)!r})"


def check_round_trip(
    folder: str | os.PathLike,
    atol: float = DEFAULT_ATOL,
    device: str | int | None = "cpu",
    model_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Load every form ``folder`` (or ``model_dir``) holds (:func:`published_forms`: the root with
    ``pipeline("image-classification")``, for an adapter with the arguments its model card gives; the
    Endpoints ``handler.py``; the ``adapter/`` subfolder with PeftModel as the card says) and compare each
    one's predictions on the example images with ``reference_predictions.json``: top-1 label equal (unless
    the reference's top two are within ``atol``) and every class score within ``atol``. Returns the root
    form's predictions."""
    folder = Path(folder)
    model_dir = Path(model_dir) if model_dir is not None else folder
    ref_path = folder / card_inputs.REFERENCE_PREDICTIONS
    if not ref_path.is_file():
        raise RoundTripError(
            f"{ref_path} is missing: the run folder has no reference predictions to check "
            "the export against (was it written by hf_transfer.training.run.run_transfer?)."
        )
    reference = json.loads(ref_path.read_text())
    if not reference:
        raise RoundTripError(f"{ref_path} lists no example images.")
    for row in reference:
        if not (folder / row["file"]).is_file():
            raise RoundTripError(
                f"Example image {row['file']} listed in {card_inputs.REFERENCE_PREDICTIONS} is missing."
            )
    outputs = []
    for form in published_forms(model_dir):
        try:
            predict, how = _load_form(form, model_dir, device)
        except Exception as err:
            raise RoundTripError(
                f"{form}: could not load the exported folder the way its card says ({type(err).__name__}: {err}). "
                "Nothing was pushed."
            ) from err
        outputs.append(_compare(folder, reference, predict, how, atol))
    return outputs[0]


def _nonfinite(scores: dict[str, float]) -> list[str]:
    return [label for label, v in scores.items() if not math.isfinite(v)]


def _compare(folder: Path, reference: list[dict], predict, how: str, atol: float) -> list[dict]:
    """Every comparison with NaN is false, so non-finite scores (the exported model's or the reference's)
    fail first, by name: a NaN model "passed" the tolerance checks below."""
    out = []
    for row in reference:
        preds = predict(str(folder / row["file"]), len(row["scores"]))
        got = {p["label"]: float(p["score"]) for p in preds}
        want = {k: float(v) for k, v in row["scores"].items()}
        for whose, scores in (("the trained model's reference", want), (f"the exported folder's ({how})", got)):
            if bad := _nonfinite(scores):
                raise RoundTripError(
                    f"Round-trip check failed on {row['file']}: {whose} scores are not finite "
                    f"({', '.join(f'{k!r}={scores[k]}' for k in bad[:3])}): the model outputs NaN/inf and "
                    "must not be published. Nothing was pushed."
                )
        if set(got) != set(want):
            raise RoundTripError(
                f"{row['file']}: {how} gives the labels {sorted(got)}, the trained model "
                f"{sorted(want)} (id2label/label_names lost or reordered?). Nothing was pushed."
            )
        ref_ranked = sorted(want, key=want.get, reverse=True)
        ref_top, got_top = ref_ranked[0], max(got, key=got.get)
        worst = max(want, key=lambda k: abs(got[k] - want[k]))
        diff = abs(got[worst] - want[worst])
        tie = len(ref_ranked) > 1 and want[ref_ranked[0]] - want[ref_ranked[1]] <= atol
        if (got_top != ref_top and not tie) or diff > atol:
            raise RoundTripError(
                f"Round-trip check failed on {row['file']} (true label {row.get('label')!r}): the trained model "
                f"predicted {ref_top!r} ({want[ref_top]:.4f}), the exported folder loaded with {how} predicts "
                f"{got_top!r} ({got[got_top]:.4f}); largest score difference {diff:.4g} on {worst!r} "
                f"(tolerance {atol}). Check preprocessor_config.json (size/mean/std) and config.json "
                "(labels, architecture). Nothing was pushed."
            )
        out.append({"file": row["file"], "label": got_top, "scores": got})
    return out


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
    """(summary line, description) of the push commit: mode/method, base, target accuracy vs baseline."""
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
        if b is not None and method != "source_only":
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


def _remote_readme(api, repo_id: str, revision: str) -> str | None:
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
) -> PushResult | None:
    """Check, card and push the run in ``output_dir`` to ``repo_id`` in one commit.

    ``repo_id`` may omit the namespace (the token's user). ``revision``: a branch (created from main
    when new). ``create_pr``: open a pull request instead of committing to the branch. ``license``:
    overrides the one read from the base model's card. ``allow_local_base``: push a LoRA adapter whose base
    is a local folder (refused otherwise: the pushed adapter and its card's code would point at a path on
    this machine). Returns None on non-main processes.
    """
    from huggingface_hub import HfApi

    if not _is_main_process():
        logger.info("Not the main process: not pushing.")
        return None
    _check_repo_id(repo_id)
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
        with _hub_errors(api, repo_id):
            repo_id, created = _create_repo(api, repo_id, private)
        new_branch = None
        try:
            with _hub_errors(api, repo_id):
                if revision:
                    new_branch = _create_branch(api, repo_id, revision)
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
                )
        except Exception as err:
            leftover = _undo_created(api, repo_id, created, new_branch)
            if leftover:
                raise PushError(f"{err} {leftover}") from err
            raise


def _commit_run(
    api,
    folder: Path,
    repo_id: str,
    results: dict,
    baseline: dict | None,
    *,
    revision: str | None,
    create_pr: bool,
    token,
    commit_message: str | None,
    upper_bound: dict | None,
    license: str | None,
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


# ------------------------------------------------------------------------------------------------
# Hub errors and clean-up
# ------------------------------------------------------------------------------------------------
def _check_repo_id(repo_id: str) -> None:
    """A malformed repo id is refused before the round-trip check, not after it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = " ".join(str(err).split())
        raise PushError(f"Invalid repo id {repo_id!r}: {reason} Nothing was pushed.") from err


def local_adapter_base(folder: str | os.PathLike) -> str | None:
    """The local folder a LoRA adapter in ``folder`` (at the root, or in ``adapter/`` beside a merged model)
    records as its base; None for a Hub base or no adapter (a merged-only folder points at no base)."""
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


def _create_repo(api, repo_id: str, private: bool | None) -> tuple[str, bool]:
    """(full repo id, whether this push created the repo): the Hub answers 200 to one creator and 409 to
    every other, so of two first pushes at the same moment exactly one owns the creation."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return api.create_repo(repo_id, private=private, repo_type="model").repo_id, True
    except HfHubHTTPError as err:
        if err.response is None or err.response.status_code not in (401, 402, 403, 409):
            raise
    # 409: it exists; 401-403: it may exist and be writable (create_repo's exist_ok logic re-checks)
    return api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id, False


@dataclass
class NewBranch:
    """A branch this push created, and the commit it was created at (None: not known, never deleted)."""

    name: str
    start: str | None


def _create_branch(api, repo_id: str, branch: str) -> NewBranch | None:
    """Create ``branch`` from the head of main when it does not exist; None when it exists, including when
    another writer created it between our listing and our request (409: the branch is theirs, not ours)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    branches = api.list_repo_refs(repo_id).branches
    if any(b.name == branch for b in branches):
        return None
    start = next((b.target_commit for b in branches if b.name == constants.DEFAULT_REVISION), None)
    try:
        api.create_branch(repo_id, branch=branch, revision=start)  # no exist_ok: a 409 must say "not ours"
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 409:
            return None
        raise
    return NewBranch(branch, start)


def _others_work(api, repo_id: str, new_branch: NewBranch | None, whole_repo: bool) -> list[str]:
    """What the repo (``whole_repo``) or the new branch holds beyond what this push's creation put there:
    [] when it holds nothing but that (the Hub's initial commit of a repo we created, or the commit a branch
    we created started at). Anything else is another writer's, or this push's own commit whose answer was
    lost after it landed: either way it is not deleted."""
    from huggingface_hub import constants

    refs = api.list_repo_refs(repo_id, include_pull_requests=whole_repo)
    heads = {b.name: b.target_commit for b in refs.branches}
    found = []
    if whole_repo:
        main = heads.get(constants.DEFAULT_REVISION)
        history = api.list_repo_commits(repo_id, revision=main) if main else []
        if len(history) != 1:  # the initial commit the Hub made when WE created the repo, and nothing after it
            newest = history[0] if history else None
            found.append(
                f"{len(history) - 1} commit(s) on {constants.DEFAULT_REVISION} after its creation"
                + (f", the newest {newest.title!r} by {', '.join(newest.authors)}" if newest else "")
            )
        ours = {constants.DEFAULT_REVISION: main, **({new_branch.name: new_branch.start} if new_branch else {})}
        found += [f"the branch {n!r}" for n, oid in heads.items() if n not in ours or oid != ours[n]]
        found += [f"the tag {t.name!r}" for t in refs.tags]
        found += [f"the pull request {p.ref}" for p in refs.pull_requests or []]
        return found
    head = heads.get(new_branch.name)
    if head is not None and head != new_branch.start:
        history = api.list_repo_commits(repo_id, revision=head)
        found.append(
            f"commits made after its creation, the newest {history[0].title!r} by {', '.join(history[0].authors)}"
        )
    return found


def _undo_created(api, repo_id: str, created_repo: bool, new_branch: NewBranch | None) -> str:
    """Delete the repo (or branch) a failed push created, only while it holds nothing but what the creation
    put there; returns what was left and why (empty when nothing was created, or it was deleted).

    Check, then delete: the Hub has no conditional delete (``delete_repo``/``delete_branch`` take no
    expected head), so a commit that lands after the listing in :func:`_others_work` and before the DELETE
    (one request round trip, milliseconds) would go with it. That window is accepted: the race that made
    pushes lose work is closed (a push that fails BECAUSE another writer's commit landed, 412, or that lost
    the creation to it, 409, sees that commit and leaves everything); what is left needs a commit that did not
    cause our failure to land inside that one round trip right after it; and never deleting would
    leave an empty repo behind every failed first push, which users then delete by hand with a far wider
    window. Anything found, or a listing that fails, leaves the repo and branch as they are."""
    if not created_repo and (new_branch is None):
        return ""
    if created_repo:
        what = f"the repo {repo_id} it created"
    else:
        what = f"the branch {new_branch.name!r} it created in {repo_id}"
    if not created_repo and new_branch.start is None:
        return f"The failed push left {what} (its starting commit is unknown): run the same command again."
    try:
        found = _others_work(api, repo_id, new_branch, whole_repo=created_repo)
    except Exception as err:  # the Hub that failed the push may fail this too: then nothing is deleted
        return (
            f"The failed push could not check what {what} holds ({type(err).__name__}), so it left it: "
            "run the same command again to complete the push."
        )
    if found:
        logger.warning("The push failed; %s holds more than that creation (%s): left as it is.", what, "; ".join(found))
        return f"The failed push left {what}: it holds more than that creation ({'; '.join(found)})."
    try:
        if created_repo:
            api.delete_repo(repo_id, repo_type="model")
        else:
            api.delete_branch(repo_id, branch=new_branch.name)
    except Exception as err:  # the Hub that failed the push may fail this too
        return (
            f"The failed push could not delete {what} ({type(err).__name__}): delete it, or run the same command again."
        )
    logger.info("The push failed: deleted %s.", what)
    return ""


_HTTP_HINTS = {
    401: "The token is invalid or expired: set HF_TOKEN or run `hf auth login` with a write token.",
    403: "The token has no write access there: use a token that can write to this namespace, or push to your own.",
    404: "The repo or revision does not exist for this token (a private repo of another user looks the same): "
    "check the repo id, --revision and the token.",
    412: "Someone committed to the branch during the push: run the same command again (the card is merged again).",
}
_NO_TOKEN = "No token was sent: set HF_TOKEN or run `hf auth login` with a write token."


def _http_error_text(err, endpoint: str, repo_id: str, has_token: bool) -> str:
    response = err.response
    status = response.status_code if response is not None else "?"
    reason = f" {response.reason_phrase}" if response is not None and response.reason_phrase else ""
    server = " ".join((err.server_message or "").split())
    if isinstance(status, int) and status >= 500:
        hint = "A server error: a push lands whole or not at all, so run the same command again later."
    elif status in (401, 403) and not has_token:
        hint = _NO_TOKEN
    else:
        hint = _HTTP_HINTS.get(status, "")
    return (
        f"Push to {repo_id} failed: the Hub at {endpoint} answered {status}{reason}"
        + (f" ({server})." if server else ".")
        + (f" {hint}" if hint else "")
    )


def _hub_cause(err: BaseException):
    """The Hub client's own error behind ``err`` (huggingface_hub wraps some, e.g. LFS uploads in a RuntimeError)."""
    import httpx2  # huggingface_hub's HTTP client: connection failures are its TransportError
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    while err is not None and not isinstance(err, (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError)):
        err = err.__cause__
    return err


@contextlib.contextmanager
def _hub_errors(api, repo_id: str):
    """Client exceptions from the Hub -> one PushError line (the original stays chained for --debug)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except Exception as err:
        cause = _hub_cause(err)
        if cause is None:
            raise
        if isinstance(cause, HfHubHTTPError):
            raise PushError(_http_error_text(cause, api.endpoint, repo_id, _has_token(api))) from err
        if isinstance(cause, OfflineModeIsEnabled):
            raise PushError(f"Cannot push to {repo_id}: HF_HUB_OFFLINE is set; unset it to reach the Hub.") from err
        raise PushError(
            f"Push to {repo_id} failed: cannot reach the Hub at {api.endpoint} ({type(cause).__name__}: "
            f"{cause}). Check the network or HF_ENDPOINT, then run the same command again."
        ) from err


def _has_token(api) -> bool:
    from huggingface_hub import get_token

    return api.token is not False and bool(api.token or get_token())
