"""The Gradio Space beside a model repo (``hf-transfer push RUN REPO --space USER/NAME``): its files and its push.

The Space holds exactly three files besides the Hub's ``.gitattributes``: ``app.py`` (the page of
:mod:`hf_transfer.app.page`, self-contained, with the model repo and revision written in), ``requirements.txt``
(the stock libraries that page needs, pinned to the versions installed here, which the page was tested with) and
``README.md`` (the Space's front matter: ``sdk: gradio``, ``models:`` naming the model repo). hf_transfer itself is
not installed there.

It is pushed like the model: one commit pinned to the head it read, ``private`` and ``create_pr`` as given, a
repo this push created deleted again when the commit fails (:mod:`hf_transfer.hub.hub_repo`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hf_transfer.app import page
from hf_transfer.hub.hub_repo import PushError, check_repo_id, create_repo, hub_errors, undo_created
from hf_transfer.models.adapters import ADAPTER_INFO

SPACE_FILES = ("README.md", "app.py", "requirements.txt")
#: the distributions every Space page needs (PyPI name -> installed distribution to read the version from)
BASE_REQUIREMENTS = ("gradio", "transformers", "torch", "huggingface_hub", "pillow")


@dataclass
class SpaceResult:
    space_id: str
    url: str
    commit_url: str
    pr_url: str | None
    files: list[str]


def _pin(dist: str) -> str:
    """``dist==version`` of the installed distribution, without a local build tag (``2.14.1+cu130`` -> ``2.14.1``)."""
    return f"{dist}=={metadata.version(dist).split('+')[0]}"


def _uses_timm(folder: Path) -> bool:
    """A timm model (TimmWrapper), or an adapter on one: transformers then needs timm to build it."""
    config = folder / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type") == "timm_wrapper"
    info = folder / ADAPTER_INFO
    return info.is_file() and json.loads(info.read_text()).get("library") == "timm"


def requirements(folder: str | Path) -> str:
    """``requirements.txt`` of the Space showing the model in ``folder``: every library its page loads, pinned."""
    folder = Path(folder)
    dists = list(BASE_REQUIREMENTS)
    if _uses_timm(folder):
        dists.append("timm")
    if (folder / "adapter_config.json").is_file():
        dists.append("peft")
    return "\n".join(_pin(d) for d in dists) + "\n"


def app_source(models: list[str], revisions: list[str | None], title: str) -> str:
    """The Space's ``app.py``: :mod:`hf_transfer.app.page` with its models, revisions and title written in."""
    text = Path(page.__file__).read_text(encoding="utf-8")
    values = {"MODELS": repr(list(models)), "REVISIONS": repr(list(revisions)), "TITLE": repr(title)}
    for name, value in values.items():

        def assign(found: re.Match[str], value: str = value) -> str:
            return f"{found.group(1)} = {value}"  # the line keeps its annotation; the value is a repr, not a pattern

        text, n = re.subn(rf"^({name}(?:: [^=]+)?) = .*$", assign, text, count=1, flags=re.M)
        if n != 1:
            raise RuntimeError(f"hf_transfer/app/page.py has no module-level {name} to write the Space's value into")
    return text


def readme(space_id: str, model_repo: str, title: str, endpoint: str) -> str:
    """The Space's ``README.md``: front matter (sdk, sdk_version, app_file, models) and a line on what it shows."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(
        title=title[:60],
        sdk="gradio",
        sdk_version=metadata.version("gradio"),
        app_file="app.py",
        models=[model_repo],
        tags=["hf-transfer", "image-classification"],
    )
    body = (
        f"# {title}\n\nTry [{model_repo}]({endpoint.rstrip('/')}/{model_repo}) in your browser: drop or paste an "
        'image and get its top classes with their probabilities, through `pipeline("image-classification")`; the '
        "example images come from the run's target test split, and the *Transfer story* tab shows the model card's "
        "results.\n\nMade with hf-transfer (`hf-transfer push RUN REPO --space "
        f"{space_id}`).\n"
    )
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def space_files(
    space_id: str, model_repo: str, folder: str | Path, revision: str | None, endpoint: str
) -> dict[str, bytes]:
    """The Space's files by path: exactly :data:`SPACE_FILES`."""
    title = f"{model_repo.split('/')[-1]}"
    files = {
        "README.md": readme(space_id, model_repo, title, endpoint),
        "app.py": app_source([model_repo], [revision], title),
        "requirements.txt": requirements(folder),
    }
    assert tuple(sorted(files)) == SPACE_FILES
    return {path: text.encode("utf-8") for path, text in files.items()}


def check_space_id(space_id: str) -> None:
    """A Space id is ``USER/NAME`` (the model card links to it before the Space is pushed), and valid."""
    if space_id.count("/") != 1:
        raise PushError(f"--space {space_id!r}: give the Space as USER/NAME (its namespace too). Nothing was pushed.")
    check_repo_id(space_id)


def push_space(
    space_id: str,
    model_repo: str,
    folder: str | Path,
    *,
    revision: str | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    token: str | bool | None = None,
) -> SpaceResult:
    """Create or update the Gradio Space ``space_id`` showing ``model_repo`` (at ``revision``) in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    check_space_id(space_id)
    api = HfApi(token=token)
    with hub_errors(api, space_id):
        space_id, created = create_repo(api, space_id, private, repo_type="space", space_sdk="gradio")
    try:
        with hub_errors(api, space_id):
            head = api.repo_info(space_id, repo_type="space").sha
            files = space_files(space_id, model_repo, folder, revision, api.endpoint)
            info = api.create_commit(
                space_id,
                [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()],
                commit_message=f"Demo of {model_repo}" + (f"@{revision}" if revision else ""),
                repo_type="space",
                create_pr=create_pr,
                parent_commit=head,
            )
    except Exception as err:
        leftover = undo_created(api, space_id, created, None, repo_type="space")
        if leftover:
            raise PushError(f"{err} {leftover}") from err
        raise
    return SpaceResult(
        space_id=space_id,
        url=f"{api.endpoint.rstrip('/')}/spaces/{space_id}",
        commit_url=info.commit_url,
        pr_url=info.pr_url,
        files=sorted(files),
    )
