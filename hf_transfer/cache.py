"""Where hf_transfer keeps what it computes once: generated domains, decoded images, features, metrics.

One root for all of them: ``$HF_TRANSFER_CACHE`` if set, else ``~/.cache/hf_transfer``. Imports
nothing else from the package, so every layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("HF_TRANSFER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_transfer"


def cache_path(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` when given (used as is), else ``<cache root>/<kind>``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / kind
