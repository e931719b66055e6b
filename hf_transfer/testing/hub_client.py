"""What tests use of the Hub test server without HTTP: a repo's head and files, repos and settings made directly, and
the environment that points a client (this process or a child) at the server."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hf_transfer.testing.hub_common import _PREFIX, USER_TOKEN

if TYPE_CHECKING:  # annotations only
    from hf_transfer.testing.hub_storage import Storage


class ClientHelpers:
    """Test helpers of :class:`~hf_transfer.testing.hub_server.HubTestServer` (a mixin over its storage)."""

    # what the helpers use of the server
    storage: Storage
    host: str

    if TYPE_CHECKING:

        @property
        def url(self) -> str:
            """The endpoint of the started server (see :class:`~hf_transfer.testing.hub_server.HubTestServer`)."""

        def _create(self, rtype: str, repo_id: str, private: bool, owner: str, sdk: str | None = None) -> bool: ...

    def repo_url(self, repo_id: str, repo_type: str = "model") -> str:
        """The URL of a repo's page on this server (what ``create_repo`` answers)."""
        return f"{self.url}/{_PREFIX[repo_type]}{repo_id}"

    def head(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str | None:
        """The commit id ``revision`` points at (None if the repo or revision does not exist)."""
        return self.storage.resolve(repo_type, repo_id, revision)

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Every file of ``revision`` with its content (small repos only)."""
        oid = self.head(repo_id, repo_type, revision)
        if oid is None:
            raise KeyError(f"{repo_type} {repo_id}@{revision} not found")
        files = self.storage.known_commit(repo_type, repo_id, oid)["files"]
        return {p: self.storage.blob_path(e["sha256"]).read_bytes() for p, e in sorted(files.items())}

    def create_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        private: bool = False,
        gated: bool = False,
        owner: str | None = None,
        space_sdk: str = "gradio",
    ) -> str:
        """Create a repo directly (no HTTP); returns its url. ``space_sdk``: a Space's sdk (``repo_type="space"``)."""
        sdk = space_sdk if repo_type == "space" else None
        self._create(repo_type, repo_id, private, owner or repo_id.split("/")[0], sdk)
        if gated:
            self.set_repo_settings(repo_id, repo_type, gated=True)
        return self.repo_url(repo_id, repo_type)

    def set_repo_settings(
        self,
        repo_id: str,
        repo_type: str = "model",
        *,
        private: bool | None = None,
        gated: bool | str | None = None,
        grant: list[str] | None = None,
    ) -> None:
        """Change a repo's visibility, gating (True means ``"auto"``) or the users granted a gated repo."""
        with self.storage.lock(repo_type, repo_id):
            meta = self.storage.meta(repo_type, repo_id)
            if meta is None:
                raise KeyError(f"{repo_type} {repo_id} not found")
            if private is not None:
                meta["private"] = bool(private)
            if gated is not None:
                meta["gated"] = gated if isinstance(gated, str) else ("auto" if gated else False)
            if grant:
                meta["granted"] = sorted(set(meta.get("granted", [])) | set(grant))
            self.storage.set_meta(repo_type, repo_id, meta)

    def subprocess_env(
        self, home: str | os.PathLike, token: str | None = USER_TOKEN, base: dict | None = None
    ) -> dict[str, str]:
        """Environment for a child process whose real clients talk to this server with a fresh cache."""
        env = dict(os.environ if base is None else base)
        for key in (
            "HF_HUB_CACHE",
            "HF_DATASETS_CACHE",
            "HF_XET_CACHE",
            "HF_ASSETS_CACHE",
            "HF_TOKEN_PATH",
            "HUGGINGFACE_HUB_CACHE",
            "TRANSFORMERS_CACHE",
            "HUGGINGFACE_CO_STAGING",
            "TRANSFORMERS_OFFLINE",
        ):
            env.pop(key, None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(home),
            HF_HUB_OFFLINE="0",
            HF_DATASETS_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_UPDATE_DOWNLOAD_COUNTS="0",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        if token:
            env["HF_TOKEN"] = token
        else:
            env.pop("HF_TOKEN", None)
        return env

    @contextlib.contextmanager
    def client_environment(
        self, home: str | os.PathLike | None = None, token: str | None = USER_TOKEN
    ) -> Iterator[ClientHelpers]:
        """Point the *already imported* clients of this process at the server, then restore them.

        huggingface_hub and datasets read ``HF_ENDPOINT``/offline flags/cache paths into module
        constants at import time, so setting environment variables is not enough in-process. This
        patches ``huggingface_hub.constants`` (ENDPOINT, the resolve URL template, HF_URL_HOSTS,
        offline, Xet, cache dirs), the module-level ``HfApi`` behind ``huggingface_hub.create_repo`` &
        co., fsspec's cached ``HfFileSystem`` instances and ``datasets.config`` (endpoint, offline,
        caches, ``USE_PARQUET_EXPORT=False``), and sets the same environment for child processes.
        transformers and timm go through huggingface_hub and need nothing more.
        """
        import importlib.util

        import huggingface_hub
        from huggingface_hub import constants as hc
        from huggingface_hub import hf_api

        home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="hub_client_home_"))
        saved_env = dict(os.environ)
        patches: list[tuple[Any, str, Any]] = []

        def patch(obj: Any, name: str, value: Any) -> None:
            patches.append((obj, name, getattr(obj, name, None)))
            setattr(obj, name, value)

        try:
            wanted = self.subprocess_env(home, token, base=saved_env)
            for key in set(saved_env) - set(wanted):
                del os.environ[key]
            os.environ.update({k: v for k, v in wanted.items() if saved_env.get(k) != v})
            patch(hc, "ENDPOINT", self.url)
            patch(hc, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}")
            patch(hc, "HF_URL_HOSTS", frozenset(hc.HF_URL_HOSTS | {self.host}))
            patch(hc, "HF_HUB_OFFLINE", False)
            patch(hc, "HF_HUB_DISABLE_XET", True)
            patch(hc, "HF_HOME", str(home))
            patch(hc, "HF_HUB_CACHE", str(home / "hub"))
            patch(hc, "HF_XET_CACHE", str(home / "xet"))
            patch(hc, "HF_ASSETS_CACHE", str(home / "assets"))
            patch(hf_api.api, "endpoint", self.url)
            # transformers keeps its own module-level HfApi (transformers.utils.hub.hf_api()), created
            # on first use with the endpoint of that moment: point it here too, or a push made after
            # an earlier server stopped goes to a dead port
            tf_hub: ModuleType | None
            try:
                import transformers.utils.hub as tf_hub
            except ImportError:
                tf_hub = None
            if tf_hub is not None and hasattr(tf_hub, "_hf_api"):
                patch(tf_hub, "_hf_api", None)
            huggingface_hub.HfFileSystem.clear_instance_cache()
            if "datasets" in sys.modules or importlib.util.find_spec("datasets") is not None:
                import datasets.config as dc

                patch(dc, "HF_ENDPOINT", self.url)
                patch(dc, "HUB_DATASETS_URL", self.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
                patch(dc, "HF_HUB_OFFLINE", False)
                patch(dc, "HF_DATASETS_OFFLINE", False)
                patch(dc, "USE_PARQUET_EXPORT", False)
                cache = home / "datasets"
                for name, value in (
                    ("HF_CACHE_HOME", home),
                    ("HF_DATASETS_CACHE", cache),
                    ("DOWNLOADED_DATASETS_PATH", cache / "downloads"),
                    ("EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted"),
                    ("HF_MODULES_CACHE", home / "modules"),
                ):
                    if hasattr(dc, name):
                        patch(dc, name, value if isinstance(getattr(dc, name), Path) else str(value))
            yield self
        finally:
            for obj, name, old in reversed(patches):
                setattr(obj, name, old)
            for key in set(os.environ) - set(saved_env):
                del os.environ[key]
            os.environ.update({k: v for k, v in saved_env.items() if os.environ.get(k) != v})
            huggingface_hub.HfFileSystem.clear_instance_cache()
