"""Where hf_transfer keeps what it computes once: generated domains, decoded images, features, metrics.

One root for all of them: ``$HF_TRANSFER_CACHE`` if set, else ``~/.cache/hf_transfer``. Imports
nothing else from the package, so every layer may use it.

Entries are written in a staging folder and renamed into place, so a reader never sees half an
entry. A writer killed with ``kill -9`` cannot remove its staging folder, so the folder's name says
who wrote it (``.staging-<name>-<host>-<pid>-<random>``) and :func:`remove_stale_staging` deletes
those whose writer is gone: on this host, a pid that no longer runs; from another host (a shared
file system), a folder untouched for :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
#: a staging folder written from another host counts as abandoned after this long without a change
STALE_AFTER_S = 7 * 24 * 3600


def cache_root() -> Path:
    env = os.environ.get("HF_TRANSFER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_transfer"


def cache_path(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` when given (used as is), else ``<cache root>/<kind>``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / kind


def _host() -> str:
    return socket.gethostname().replace("-", "_")  # "-" separates the fields of a staging name


def make_staging_dir(root: str | os.PathLike, name: str) -> Path:
    """A new, empty staging folder under ``root`` for the entry ``name``, named after this process."""
    os.makedirs(root, exist_ok=True)
    prefix = f"{STAGING_PREFIX}{name}-{_host()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def _writer(folder_name: str) -> tuple[str, int] | None:
    """``(host, pid)`` from a staging folder's name (None when it is not one)."""
    parts = folder_name[len(STAGING_PREFIX):].rsplit("-", 3)
    if not folder_name.startswith(STAGING_PREFIX) or len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


def _abandoned(path: Path, host: str, pid: int) -> bool:
    if host == _host():
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:  # removed meanwhile
        return False


def remove_stale_staging(root: str | os.PathLike) -> int:
    """Delete the staging folders under ``root`` whose writer is gone (see the module doc); returns how many."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    removed = 0
    for entry in entries:
        writer = _writer(entry.name)
        if writer is None or not entry.is_dir(follow_symlinks=False):
            continue
        if _abandoned(Path(entry.path), *writer):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    if removed:
        logger.warning("Removed %d staging folder(s) left under %s by interrupted runs.", removed, root)
    return removed
