"""Room on the disk before a large write, and a clear error when there is none.

A full disk showed up as anything but "disk full": torch's ``inline_container.cc: unexpected pos`` for a
checkpoint, and SIGBUS (exit 135, no message) for a memory-mapped cache on a full tmpfs, where a write
into a page that the file system cannot back kills the process. So, for every large file
(a memory-mapped cache file, a checkpoint, an export):

* :func:`ensure_free_space` compares ``shutil.disk_usage`` with the bytes needed before the work starts;
* :func:`allocate` reserves a file's blocks with ``os.posix_fallocate`` before it is memory-mapped and
  written (a full disk then fails that call with ENOSPC instead of killing the process later);
* :func:`space_errors` turns what the libraries raise on a full disk (``OSError`` ENOSPC/EDQUOT,
  safetensors' ``StorageFull``, torch's ``unexpected pos`` / ``file write failed`` when the disk is
  indeed short) into :class:`~hf_transfer.errors.NoSpaceError`: "no space left on PATH, N MB needed".

Shared by every layer (it imports only :mod:`hf_transfer.errors`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_transfer.errors import NoSpaceError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: messages of errors that mean "the disk is full" whatever the library
_FULL_MARKERS = ("no space left", "storagefull", "disk quota exceeded")
#: torch's serializer errors that a full disk causes, among other things (checked against the free space)
_WRITE_FAILED_MARKERS = ("unexpected pos", "file write failed")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _existing(path: str | os.PathLike) -> Path:
    """``path`` or its nearest existing parent (what ``disk_usage`` can ask about before anything is created)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds (or will hold) ``path``."""
    return shutil.disk_usage(_existing(path)).free


def ensure_free_space(path: str | os.PathLike, nbytes: int) -> None:
    """Raise :class:`NoSpaceError` naming ``path`` when its file system has fewer than ``nbytes`` free."""
    free = free_bytes(path)
    if free < nbytes:
        raise NoSpaceError(path, nbytes, free)


def allocate(path: str | os.PathLike, nbytes: int) -> None:
    """Reserve the blocks of the existing file ``path`` up to ``nbytes`` (``os.posix_fallocate``).

    So writing it later through a memory map cannot fail with SIGBUS; ENOSPC becomes :class:`NoSpaceError`.

    Where the call does not exist (macOS, Windows) or the file system does not support it, nothing is
    reserved (:func:`ensure_free_space` before it is then the only check)."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, int(nbytes))
    except OSError as err:
        if err.errno in _FULL_ERRNOS:
            raise NoSpaceError(path, nbytes, free_bytes(path)) from err
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def is_disk_full_error(err: BaseException, path: str | os.PathLike, nbytes: int) -> bool:
    """Whether ``err``, raised while writing ``nbytes`` under ``path``, comes from a full disk."""
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        return True
    text = str(err).lower()
    if any(marker in text for marker in _FULL_MARKERS):
        return True
    # torch says only that the write failed: a full disk when there is now too little room left
    return any(marker in text for marker in _WRITE_FAILED_MARKERS) and free_bytes(path) < nbytes


@contextlib.contextmanager
def space_errors(path: str | os.PathLike, nbytes: int) -> Iterator[None]:
    """Re-raise a full disk met in the block as :class:`NoSpaceError` naming ``path`` and ``nbytes``.

    The error names the folder the caller writes and all it needs, rather than a staging file inside it."""
    try:
        yield
    except NoSpaceError as err:  # from a file inside ``path``: name what the caller writes, and all it needs
        raise NoSpaceError(path, max(nbytes, err.nbytes), err.free) from err
    except Exception as err:
        if is_disk_full_error(err, path, nbytes):
            raise NoSpaceError(path, nbytes, free_bytes(path)) from err
        raise


def tensors_bytes(tensors: Iterable) -> int:
    """Bytes of the given tensors' data (what serialising them writes, headers aside)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def allocated_memmap(path: str | os.PathLike[str], dtype: npt.DTypeLike, shape: tuple[int, ...]) -> np.memmap[Any, Any]:
    """A new ``.npy`` file at ``path`` opened as a writable memmap, its blocks reserved first.

    See :func:`allocate`: a full disk is a :class:`NoSpaceError` here, never SIGBUS while it is written."""
    import numpy as np

    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    ensure_free_space(path, nbytes)
    with space_errors(path, nbytes):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        allocate(path, os.path.getsize(path))
    except BaseException:
        del out
        raise
    return out
