"""The Hub side of a push: the repo id checked, the repo and branch created (and deleted again after a failed
first push, only while they hold nothing but what that creation put there), and Hub failures turned into one
:class:`PushError` line naming the repo, the endpoint and what to do."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

logger = logging.getLogger(__name__)


class PushError(RuntimeError):
    """The folder cannot be pushed as it is (not a run folder, nothing to push, ...)."""


def check_repo_id(repo_id: str) -> None:
    """A malformed repo id is refused before the round-trip check, not after it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = " ".join(str(err).split())
        raise PushError(f"Invalid repo id {repo_id!r}: {reason} Nothing was pushed.") from err


def create_repo(
    api: HfApi, repo_id: str, private: bool | None, repo_type: str = "model", space_sdk: str | None = None
) -> tuple[str, bool]:
    """Create the repo (a Space with ``space_sdk``), or find it there; returns (its full id, whether we created it).

    The Hub answers 200 to one creator and 409 to every other, so of two first pushes at the same moment
    exactly one owns the creation.
    """
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return api.create_repo(repo_id, private=private, repo_type=repo_type, space_sdk=space_sdk).repo_id, True
    except HfHubHTTPError as err:
        if err.response is None or err.response.status_code not in (401, 402, 403, 409):
            raise
    # 409: it exists; 401-403: it may exist and be writable (create_repo's exist_ok logic re-checks)
    again = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk)
    return again.repo_id, False


@dataclass
class NewBranch:
    """A branch this push created, and the commit it was created at (None: not known, never deleted)."""

    name: str
    start: str | None


def create_branch(api: HfApi, repo_id: str, branch: str) -> NewBranch | None:
    """Create ``branch`` from the head of main when it does not exist.

    None when it exists, including when another writer created it between our listing and our request (409:
    the branch is theirs, not ours).
    """
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


def _others_work(
    api: HfApi, repo_id: str, new_branch: NewBranch | None, whole_repo: bool, repo_type: str = "model"
) -> list[str]:
    """What the repo (``whole_repo``) or the new branch holds beyond what this push's creation put there:
    [] when it holds nothing but that (the Hub's initial commit of a repo we created, or the commit a branch
    we created started at). Anything else is another writer's, or this push's own commit whose answer was
    lost after it landed: either way it is not deleted."""
    from huggingface_hub import constants

    refs = api.list_repo_refs(repo_id, include_pull_requests=whole_repo, repo_type=repo_type)
    heads = {b.name: b.target_commit for b in refs.branches}
    found = []
    if whole_repo:
        main = heads.get(constants.DEFAULT_REVISION)
        history = api.list_repo_commits(repo_id, revision=main, repo_type=repo_type) if main else []
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
    assert new_branch is not None, "a push that did not create the repo asks only about the branch it created"
    head = heads.get(new_branch.name)
    if head is not None and head != new_branch.start:
        history = api.list_repo_commits(repo_id, revision=head, repo_type=repo_type)
        found.append(
            f"commits made after its creation, the newest {history[0].title!r} by {', '.join(history[0].authors)}"
        )
    return found


def undo_created(
    api: HfApi, repo_id: str, created_repo: bool, new_branch: NewBranch | None, repo_type: str = "model"
) -> str:
    """Delete the repo (or branch) a failed push created, only while it holds nothing but what the creation put.

    Returns what was left and why (empty when nothing was created, or it was deleted).

    Check, then delete: the Hub has no conditional delete (``delete_repo``/``delete_branch`` take no
    expected head), so a commit that lands after the listing in :func:`_others_work` and before the DELETE
    (one request round trip, milliseconds) would go with it. That window is accepted: the race that made
    pushes lose work is closed (a push that fails BECAUSE another writer's commit landed, 412, or that lost
    the creation to it, 409, sees that commit and leaves everything); what is left needs a commit that did not
    cause our failure to land inside that one round trip right after it; and never deleting would
    leave an empty repo behind every failed first push, which users then delete by hand with a far wider
    window. Anything found, or a listing that fails, leaves the repo and branch as they are."""
    if created_repo:
        what = f"the repo {repo_id} it created"
    else:
        if new_branch is None:
            return ""
        what = f"the branch {new_branch.name!r} it created in {repo_id}"
        if new_branch.start is None:
            return f"The failed push left {what} (its starting commit is unknown): run the same command again."
    try:
        found = _others_work(api, repo_id, new_branch, whole_repo=created_repo, repo_type=repo_type)
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
            api.delete_repo(repo_id, repo_type=repo_type)
        else:
            assert new_branch is not None, "a push that created neither returned above"
            api.delete_branch(repo_id, branch=new_branch.name, repo_type=repo_type)
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


def _http_error_text(err: HfHubHTTPError, endpoint: str, repo_id: str, has_token: bool) -> str:
    response = err.response
    status = response.status_code if response is not None else None
    reason = f" {response.reason_phrase}" if response is not None and response.reason_phrase else ""
    server = " ".join((err.server_message or "").split())
    if status is None:
        hint = ""
    elif status >= 500:
        hint = "A server error: a push lands whole or not at all, so run the same command again later."
    elif status in (401, 403) and not has_token:
        hint = _NO_TOKEN
    else:
        hint = _HTTP_HINTS.get(status, "")
    return (
        f"Push to {repo_id} failed: the Hub at {endpoint} answered {'?' if status is None else status}{reason}"
        + (f" ({server})." if server else ".")
        + (f" {hint}" if hint else "")
    )


def _hub_cause(err: BaseException) -> BaseException | None:
    """The Hub client's own error behind ``err`` (huggingface_hub wraps some, e.g. LFS uploads in a RuntimeError)."""
    import httpx2  # huggingface_hub's HTTP client: connection failures are its TransportError
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError)):
        cause = cause.__cause__
    return cause


@contextlib.contextmanager
def hub_errors(api: HfApi, repo_id: str) -> Iterator[None]:
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


def _has_token(api: HfApi) -> bool:
    from huggingface_hub import get_token

    return api.token is not False and bool(api.token or get_token())
