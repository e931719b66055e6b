"""User-facing errors: raised before long work starts, each naming the thing to fix.

Every module imports this one, so it is also where a package whose ``__init__.py`` is PyPI's ``hf-transfer``'s
(same import name, see :mod:`hf_transfer.runtime.installation`) stops with an ImportError that says what to do."""

import os

from hf_transfer.runtime.installation import require_own_package

require_own_package()


class TransferConfigError(ValueError):
    """A dataset spec, column, label, backbone id or option that cannot work as given."""


class NoSpaceError(OSError):
    """A disk too full for a file hf_transfer is about to write (a cache entry, a checkpoint, an export).

    An ``OSError`` with ``errno.ENOSPC`` whose message names the folder and the megabytes needed, because
    the libraries' own errors do not (torch: ``unexpected pos``; a memory-mapped write: SIGBUS)."""

    def __init__(self, path: str | os.PathLike[str], nbytes: int, free: int | None = None) -> None:
        import errno

        mb_needed = max(1, -(-int(nbytes) // 2**20))
        free_text = f" ({free // 2**20} MB free)" if free is not None else ""
        super().__init__(f"no space left on {path}, {mb_needed} MB needed{free_text}")
        self.errno = errno.ENOSPC
        self.path, self.nbytes, self.free = str(path), int(nbytes), free

    # OSError pickles its message as the only argument
    def __reduce__(self) -> tuple[type["NoSpaceError"], tuple[str, int, int | None]]:
        return type(self), (self.path, self.nbytes, self.free)
