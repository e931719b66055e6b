"""pytest fixtures that run the real Hugging Face clients against a local :class:`HubTestServer`.

Register with ``pytest_plugins = ["hf_transfer.testing.pytest_plugin"]`` in a conftest.py.

How the clients are pointed at the server
-----------------------------------------
huggingface_hub and datasets read ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET`` and
their cache paths into module constants *at import time*, and a test session normally imports them
long before a fixture runs (this project's tests/conftest.py even sets ``HF_HUB_OFFLINE=1`` for the
whole session). Two mechanisms are offered, both used by tests/test_hub_server.py:

* In-process (``hub_server``): :meth:`HubTestServer.client_environment` patches, for the duration of
  the test only, ``huggingface_hub.constants`` (ENDPOINT, the resolve URL template, HF_URL_HOSTS,
  offline, Xet, cache dirs), the module-level ``HfApi`` behind ``huggingface_hub.create_repo``
  & co., fsspec's cached ``HfFileSystem`` instances and ``datasets.config`` (endpoint, offline,
  caches, ``USE_PARQUET_EXPORT=False``), and sets the matching environment variables (``HF_ENDPOINT``,
  ``HF_HUB_OFFLINE=0``, ``HF_DATASETS_OFFLINE=0``, ``HF_HUB_DISABLE_XET=1``,
  ``HF_UPDATE_DOWNLOAD_COUNTS=0``, ``HF_TOKEN``, a fresh ``HF_HOME``) so that subprocesses started by
  the test inherit them. Everything is restored afterwards, so offline tests are unaffected.
  transformers and timm go through huggingface_hub and need nothing more. This is fast (no extra
  imports) and is what most tests want.
* Subprocess (``run_with_hub`` / ``hub_subprocess_env``): the code runs in a fresh interpreter whose
  environment is set before any import, with its own empty ``HF_HOME``. It is the most faithful
  "another machine, fresh cache" check and does not depend on any patched constant.

The server accepts two tokens: ``USER_TOKEN`` (user ``"user"``, the default for the clients) and
``OTHER_TOKEN`` (user ``"other"``), to test private repos.

Example::

    from huggingface_hub import HfApi, hf_hub_download

    def test_round_trip(hub_server, tmp_path):
        HfApi().create_repo("user/demo")
        HfApi().upload_file(path_or_fileobj=b"hi", path_in_repo="a.txt", repo_id="user/demo")
        assert open(hf_hub_download("user/demo", "a.txt")).read() == "hi"
        assert hub_server.files("user/demo")["a.txt"] == b"hi"
        hub_server.faults.add("commit", drop=True)  # the next commit's connection is dropped
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hf_transfer.testing.hub_common import OTHER_TOKEN, OTHER_USER, USER, USER_TOKEN
from hf_transfer.testing.hub_server import HubTestServer

__all__ = ["hub_server", "hub_server_bare", "hub_subprocess_env", "run_with_hub"]

_TOKENS = {USER_TOKEN: USER, OTHER_TOKEN: OTHER_USER}


@pytest.fixture
def hub_server_bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubTestServer]:
    """A started server (tokens ``USER_TOKEN``/``OTHER_TOKEN``) with nothing patched in this process."""
    root = tmp_path_factory.mktemp("hub_server")
    with HubTestServer(root, tokens=dict(_TOKENS)) as server:
        yield server
        assert not server.errors, f"internal errors in the Hub test server: {server.errors}"


@pytest.fixture
def hub_server(hub_server_bare: HubTestServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubTestServer]:
    """A started server, with this process's clients pointed at it (fresh cache, ``USER_TOKEN``)."""
    home = tmp_path_factory.mktemp("hub_client_home")
    with hub_server_bare.client_environment(home=home, token=USER_TOKEN):
        yield hub_server_bare


@pytest.fixture
def hub_subprocess_env(hub_server_bare: HubTestServer, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict]:
    """``hub_subprocess_env(token=USER_TOKEN)`` -> an environment dict with a fresh, empty HF_HOME."""

    def make(token: str | None = USER_TOKEN) -> dict:
        return hub_server_bare.subprocess_env(tmp_path_factory.mktemp("hub_child_home"), token=token)

    return make


@pytest.fixture
def run_with_hub(hub_subprocess_env: Callable[..., dict], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """A runner of Python code in a fresh interpreter that talks to the server from an empty cache.

    ``run_with_hub(code, token=USER_TOKEN, timeout=300, check=True)`` returns the CompletedProcess (text
    stdout/stderr). With ``check=True`` a non-zero exit fails the test and shows the output.
    """
    counter = itertools.count()

    def run(
        code: str,
        *,
        token: str | None = USER_TOKEN,
        timeout: float = 300,
        check: bool = True,
        args: list[str] | None = None,
    ) -> subprocess.CompletedProcess:
        script = tmp_path / f"hub_client_{next(counter)}.py"
        script.write_text(textwrap.dedent(code))
        env = hub_subprocess_env(token)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
        proc = subprocess.run(
            [sys.executable, str(script), *(args or [])],
            env=env,
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"hub client subprocess failed (exit {proc.returncode})\n--- stdout ---\n{proc.stdout}"
                f"\n--- stderr ---\n{proc.stderr[-6000:]}",
                pytrace=False,
            )
        return proc

    return run
