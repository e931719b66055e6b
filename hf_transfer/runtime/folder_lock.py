"""One output folder, one writer: an OS lock on the folder for as long as a process writes it.

Two identical runs started together into one ``output_dir`` both found the folder free (neither had
written anything yet), then wrote into each other's files, or one read the other's half-written JSON. No
look at the folder can settle who owns it; a lock can: ``fcntl.flock`` on ``<folder>/.hf_transfer.lock``,
taken BEFORE the folder is checked and held until the last write (a run: export, card and push).

* The holder writes its pid, host, command and start time into the lock file, so a refusal names them.
* The kernel drops a flock when its process ends, ``kill -9`` included: a lock file left by a dead
  process is taken over (its old content is overwritten, and a warning says whose it was).
* The file is removed on release, after which a process that had opened it just before could lock the
  removed file: every lock is therefore checked to still be the file at that path, and taken again if not.
* In one process the lock nests for the thread that holds it (a run pushes its own folder); another thread
  of the same process is refused like another process.
* The name starts with a dot and ends in ``.lock``: the push never publishes it, and a folder holding it
  (left by a killed process) is not "used by another run".
* Local file systems only: whether flock works across machines on NFS depends on the client and server;
  checking that is out of scope.

Imports nothing from the package but ``errors``, so every layer (training, hub, evaluate) may use it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass

from hf_transfer.errors import TransferConfigError

logger = logging.getLogger(__name__)

LOCK_FILE = ".hf_transfer.lock"
_HOLDER_WAIT_S = 1.0  # a holder writes its pid right after locking: how long a refusal waits to read it


class FolderInUseError(TransferConfigError):
    """Another process (or another thread of this one) holds the folder's lock."""


@dataclass
class _Held:
    folder: str
    path: str
    fd: int
    thread: int
    pid: int
    created_folder: bool
    count: int = 1


_HELD: dict[str, _Held] = {}  # lock file path -> what this process holds
_GUARD = threading.Lock()


class FolderLock:
    """A held folder lock: :meth:`release` it, or use it as a context manager (garbage collection and the
    end of the process release it too)."""

    def __init__(self, held: _Held) -> None:
        self.folder = held.folder
        self._release = weakref.finalize(self, _drop, held)

    def release(self) -> None:
        """Let the folder go (once; later calls do nothing)."""
        self._release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, command: str, *, create: bool = True) -> FolderLock:
    """Hold ``folder`` for ``command`` (``train``, ``push``, ...), or raise :class:`FolderInUseError`.

    The error names the holder's pid and host. ``create``: make the folder when missing (removed again on release if
    still empty)."""
    folder = os.path.realpath(folder)
    path = os.path.join(folder, LOCK_FILE)
    with _GUARD:
        held = _HELD.get(path)
        if held is not None and held.pid == os.getpid():
            if held.thread != threading.get_ident():
                raise FolderInUseError(_refusal(folder, _holder(held.fd), same_process=True))
            held.count += 1
            return FolderLock(held)
        created = create and not os.path.isdir(folder)
        if create:
            os.makedirs(folder, exist_ok=True)
        fd = _take(path, folder, command, create)
        held = _HELD[path] = _Held(folder, path, fd, threading.get_ident(), os.getpid(), created)
    return FolderLock(held)


def _take(path: str, folder: str, command: str, create: bool) -> int:
    """The locked, current lock file's descriptor, with this process's details written into it."""
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the folder was removed (an empty one, by a holder that created it)
            if not create:
                raise
            os.makedirs(folder, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # EWOULDBLOCK: held by another open file (another process or thread)
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(_refusal(folder, holder)) from None
        except OSError:
            os.close(fd)
            raise
        if _is_current(fd, path):
            _write_holder(fd, command, folder)
            return fd
        os.close(fd)  # the previous holder removed this file as we opened it: lock the one at the path now
    raise OSError(f"Could not take the lock {path}: it was replaced 100 times in a row.")


def _is_current(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder(fd: int) -> dict | None:
    """What the holder wrote (it writes right after locking: wait a moment for it)."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while (info := _read(fd)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return info


def _write_holder(fd: int, command: str, folder: str) -> None:
    stale = _read(fd)
    if stale:  # a lock is removed on release: this one's holder ended without releasing it (killed)
        logger.warning(
            "Took over the lock on %s left by %s (pid %s on host %s), which ended without releasing it.",
            folder,
            stale.get("command", "?"),
            stale.get("pid", "?"),
            stale.get("host", "?"),
        )
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _refusal(folder: str, holder: dict | None, same_process: bool = False) -> str:
    if holder:
        who = (
            f"{holder.get('command', 'hf-transfer')} (pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, since {holder.get('started', '?')}"
            + (", this process, another thread)" if same_process else ")")
        )
    else:
        who = "another hf-transfer process (it has not written its pid and host yet)"
    return (
        f"The folder {folder!r} is being written by {who}: one folder takes one writer at a time. Wait for it to "
        f"end, or choose another folder. (The lock is {os.path.join(folder, LOCK_FILE)}; the system releases it "
        "when its process ends, so a killed run never blocks the folder.)"
    )


def _drop(held: _Held) -> None:
    """Release one hold; the last one removes the lock file (and the folder, if this lock made it and it is
    empty), then unlocks. A forked child (a data-loader worker) shares the lock: it never removes it."""
    if held.pid != os.getpid():
        return
    with _GUARD:
        held.count -= 1
        if held.count > 0:
            return
        _HELD.pop(held.path, None)
        with contextlib.suppress(OSError):
            os.unlink(held.path)  # while still locked: nobody can lock this file and find it current
        if held.created_folder:
            with contextlib.suppress(OSError):
                os.rmdir(held.folder)  # only if empty: the run was refused before writing anything
        os.close(held.fd)


def check_output_folder(output_dir: str | None, command: str, outputs: tuple[str, ...], *, overwrite: bool) -> None:
    """Refuse, before any work, an ``--output_dir`` that ``command`` cannot write ``outputs`` into.

    That is a file, a folder another process holds (a run writing it), or one holding files without
    ``--overwrite_output_dir``."""
    if output_dir is None:
        return
    if os.path.isfile(output_dir):
        raise TransferConfigError(f"--output_dir {output_dir!r} is a file; give a folder.")
    if os.path.isdir(output_dir):  # a folder a run is writing: refused now, not after the work
        lock_folder(output_dir, command, create=False).release()
    if os.path.isdir(output_dir) and set(os.listdir(output_dir)) - {LOCK_FILE} and not overwrite:
        raise TransferConfigError(
            f"--output_dir {output_dir!r} already holds files; pass --overwrite_output_dir to write "
            f"{', '.join(outputs)} there (other files are kept), or choose an empty folder."
        )
