"""The Hub test server's shared pieces: its users and tokens, the LFS rules, the fault points, git/LFS ids and
the error it answers with."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

USER = "user"
OTHER_USER = "other"
USER_TOKEN = "hf_hubtestserver_user_0123456789abcdef"
OTHER_TOKEN = "hf_hubtestserver_other_0123456789abcdef"

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack "
    "*.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors "
    "saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* "
    "*.mds *.lz4 *.jpg *.jpeg *.png *.webp *.gif *.bmp *.tiff *.mp3 *.wav *.flac *.ogg *.mp4"
).split()
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
FAULT_POINTS = (
    "lfs_batch",
    "lfs_upload",
    "lfs_verify",
    "preupload",
    "commit",
    "branch",
    "resolve",
    "repo_info",
    "tree",
    "any",
)
_SHA40 = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9_]{6,}")
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_TYPE_OF_PREFIX = {p.rstrip("/"): t for t, p in _PREFIX.items() if p}  # "datasets" -> "dataset", ...
SPACE_SDKS = ("gradio", "docker", "static", "streamlit")  # what the Hub accepts as a Space's sdk


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands for an LFS file in git (its git blob id is the file's ``oid``)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _redact(text: str) -> str:
    return _TOKEN_LIKE.sub("hf_***", text)


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class HubError(Exception):
    """An HTTP error answered as the Hub does: JSON ``{"error"}`` plus X-Error-Code/Message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})


class _Drop(Exception):
    """Close the connection without answering."""
