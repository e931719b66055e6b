"""Where hf_transfer keeps what it computes once: generated domains, decoded images, features.

One root for all of them: ``$HF_TRANSFER_CACHE`` if set, else ``~/.cache/hf_transfer``. Imports
nothing else from the package, so every layer may use it.

Entries are written in a staging folder and renamed into place, so a reader never sees half an
entry. A writer killed with ``kill -9`` cannot remove its staging folder, so the folder's name says
who wrote it (``.staging-<name>-<host>-<pid>-<random>``) and :func:`remove_stale_staging` deletes
those whose writer is gone: on this host, a pid that no longer runs; from another host (a shared
file system), a folder untouched for :data:`STALE_AFTER_S`.

The same "write aside, then rename" serves every layer, in three shapes: :func:`staged_entry` (a
cache entry folder renamed into place), :func:`staged_files` (files moved into an existing folder,
e.g. an exported model) and :func:`staged_file` / :func:`write_atomic` (one file).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
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
    parts = folder_name[len(STAGING_PREFIX) :].rsplit("-", 3)
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


@contextlib.contextmanager
def staged_entry(root: str | os.PathLike, name: str, *, done: str) -> Iterator[Path]:
    """A new staging folder for the entry ``root/name``, renamed into place when the block ends without
    an error and removed in any case. When another process renamed its copy first (``root/name/done``
    exists), that copy is kept: same key, same content."""
    final = Path(root) / name
    tmp = make_staging_dir(root, name)
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / done).exists():  # not a concurrent writer: a real error
                raise
            logger.info("Another process wrote %s first; using it.", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike) -> Iterator[Path]:
    """A staging folder inside ``folder`` (created if needed); when the block ends without an error, each
    file written there replaces its namesake in ``folder`` (``os.replace``, one file at a time), so a
    failed write leaves the folder's earlier files as they were. The staging folder is removed in any case."""
    folder = Path(folder)
    tmp = make_staging_dir(folder, "files")
    try:
        yield tmp
        for name in os.listdir(tmp):
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name next to ``path`` to write to; renamed onto ``path`` when the block ends without an
    error (a reader sees the old file or the new one, never half of one), removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text`` (see :func:`staged_file`)."""
    with staged_file(path) as tmp:
        tmp.write_text(text)
