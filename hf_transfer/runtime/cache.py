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

A renamed entry can still go bad later on disk (truncated by a full disk or a copy, zeroed by a crash of
the file system), and a memory-mapped reader then fails with an mmap error or, worse, reads zeros and
trains on them. So a writer records each file's size and checksum in the entry's metadata
(:func:`file_records`, written after the data), and a reader checks them on first use in a process
(:func:`entry_problem`); a bad entry is removed with a warning naming it (:func:`discard_entry`) and
rebuilt by the caller. The checksum is XXH3-64 (``xxhash``, already a dependency of ``datasets``): made
for detecting accidental damage, and about as fast as reading the file from the page cache (one core,
a file in the page cache: 12.7 GB/s, where zlib's CRC-32 did 3.1 and BLAKE2b 0.7; on a loaded machine
3.8 GB/s against CRC-32's 0.8), so a check costs little next to an epoch that reads the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from hf_transfer.errors import TransferConfigError
from hf_transfer.runtime.disk import ensure_free_space, space_errors

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
#: a staging folder written from another host counts as abandoned after this long without a change
STALE_AFTER_S = 7 * 24 * 3600
#: the key of an entry's metadata that holds its files' sizes and checksums
FILES_RECORD = "files"
#: the checksum in each file's record (another name, e.g. from a later version, counts as no record)
CHECKSUM = "xxh3_64"
#: bytes read per step while a file is checksummed
_CHECKSUM_CHUNK = 8 << 20
#: files this process has checked or written, as (device, inode, size, mtime): checked once per process
_VERIFIED: set[tuple[int, int, int, int]] = set()


def cache_root() -> Path:
    """The root of every hf_transfer cache: ``$HF_TRANSFER_CACHE``, else ``~/.cache/hf_transfer``."""
    env = os.environ.get("HF_TRANSFER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_transfer"


def cache_path(kind: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` when given (used as is), else ``<cache root>/<kind>``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / kind


def _host() -> str:
    return socket.gethostname().replace("-", "_")  # "-" separates the fields of a staging name


def make_staging_dir(root: str | os.PathLike[str], name: str) -> Path:
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


def remove_stale_staging(root: str | os.PathLike[str]) -> int:
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
def staged_entry(root: str | os.PathLike[str], name: str, *, done: str) -> Iterator[Path]:
    """A new staging folder for the entry ``root/name``, renamed into place when the block ends without error.

    It is removed in any case. When another process renamed its copy first (``root/name/done``
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
def staged_files(folder: str | os.PathLike[str], nbytes: int = 0) -> Iterator[Path]:
    """A staging folder inside ``folder`` (created if needed) whose files replace their namesakes on success.

    When the block ends without an error, each file written there replaces its namesake in ``folder``
    (``os.replace``, one file at a time), so a failed write leaves the folder's earlier files as they were.
    The staging folder is removed in any case.

    ``nbytes``: about what the files take; a disk with less free room is refused before anything is
    written, and a full disk met while writing is a :class:`~hf_transfer.errors.NoSpaceError` naming
    ``folder`` (:mod:`hf_transfer.runtime.disk`)."""
    folder = Path(folder)
    ensure_free_space(folder, nbytes)
    tmp = make_staging_dir(folder, "files")
    try:
        with space_errors(folder, nbytes):
            yield tmp
            for name in os.listdir(tmp):
                os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary name next to ``path`` to write to, renamed onto ``path`` when the block ends without error.

    A reader sees the old file or the new one, never half of one; the temporary name is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """``path`` holds ``text`` (see :func:`staged_file`)."""
    with staged_file(path) as tmp:
        tmp.write_text(text)


# --------------------------------------------------------------------------------------------
# entry records: size + checksum of each file, checked on first use


def _identity(path: str | os.PathLike[str]) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def file_checksum(path: str | os.PathLike[str]) -> str:
    """The XXH3-64 of the file's bytes, as 16 hex digits (read in chunks: any file size, little RAM)."""
    digest = xxhash.xxh3_64()
    buf = bytearray(_CHECKSUM_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def file_records(folder: str | os.PathLike[str], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes", "xxh3_64"}}`` of the finished files ``folder/name``, for the entry's metadata."""
    records = {}
    for name in names:
        path = Path(folder) / name
        records[name] = {"bytes": path.stat().st_size, CHECKSUM: file_checksum(path)}
        _VERIFIED.add(_identity(path))  # written by this process: its first use needs no second read
    return records


def _file_problem(path: Path, record: Any) -> str | None:
    if not isinstance(record, dict) or not {"bytes", CHECKSUM} <= set(record):
        return f"the record of {path.name} is malformed"
    try:
        identity = _identity(path)
    except FileNotFoundError:
        return f"{path.name} is missing"
    if identity[2] != record["bytes"]:
        return f"{path.name} has {identity[2]} bytes, its record says {record['bytes']} (truncated or overwritten)"
    if identity in _VERIFIED:
        return None
    if file_checksum(path) != record[CHECKSUM]:
        return f"{path.name} does not match its checksum (its bytes changed on disk, e.g. zeroed)"
    _VERIFIED.add(identity)
    return None


def entry_problem(folder: str | os.PathLike[str], meta_name: str = "meta.json") -> str | None:
    """Why the cache entry ``folder`` cannot be used (None: it can).

    Its metadata ``meta_name`` must parse and hold a :data:`FILES_RECORD` (an entry without one is incomplete), and
    every recorded file
    must have its size and checksum. Each file is read once per process (a checked file is remembered
    by device, inode, size and mtime)."""
    meta_path = Path(folder) / meta_name
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return f"{meta_name} is missing"
    except (OSError, ValueError) as err:
        return f"{meta_name} is unreadable ({type(err).__name__})"
    records = meta.get(FILES_RECORD) if isinstance(meta, dict) else None
    if not isinstance(records, dict) or not records:
        return f"{meta_name} has no size/checksum record of its files (written by an older version, or incomplete)"
    for name, record in records.items():
        problem = _file_problem(Path(folder) / name, record)
        if problem is not None:
            return problem
    return None


def discard_entry(folder: str | os.PathLike[str], problem: str, what: str = "cache entry") -> None:
    """Remove the bad entry ``folder`` with a warning naming it and ``problem``, so the caller rebuilds it.

    It is first renamed to a staging name (a reader never sees it half deleted; a removal killed midway is
    cleaned up by :func:`remove_stale_staging`). An entry that cannot be removed is refused, naming it."""
    folder = Path(folder)
    logger.warning("The %s %s is damaged or incomplete (%s); rebuilding it.", what, folder, problem)
    try:
        trash = make_staging_dir(folder.parent, f"{folder.name}_bad")
        try:
            os.rename(folder, trash / "entry")
        except FileNotFoundError:  # another process removed it first
            pass
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    except OSError as err:
        raise TransferConfigError(
            f"The {what} {folder} is damaged or incomplete ({problem}) and cannot be removed "
            f"({type(err).__name__}: {err}); delete it, or use another cache folder."
        ) from err
