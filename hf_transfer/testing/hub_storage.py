"""The Hub test server's storage: repos, refs, commits and blobs (LFS and regular) on disk."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import threading
from pathlib import Path

from hf_transfer.testing.hub_common import _SHA40, HubError, _now, _write_json_atomic, git_blob_sha1, lfs_pointer


class Storage:
    """Blobs by sha256, per-repo commit snapshots and refs, on disk under ``root``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.tmp, self.root / "repos"):
            d.mkdir(parents=True, exist_ok=True)
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # blobs -----------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        """The file holding a blob (whether or not it exists yet)."""
        return self.blobs / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        """Whether the blob is stored (with that size, when ``size`` is given)."""
        p = self.blob_path(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as a blob (atomically, once) and return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            fd, tmp = tempfile.mkstemp(dir=self.tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.blob_path(sha))
        return sha

    def put_file(self, tmp_path: Path, sha256: str, size: int) -> None:
        """Move an uploaded temp file into the blob store after checking its size and sha256."""
        h = hashlib.sha256()
        n = 0
        with open(tmp_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
        if n != size or h.hexdigest() != sha256:
            tmp_path.unlink(missing_ok=True)
            raise HubError(
                400,
                f"Uploaded content does not match: expected sha256 {sha256} and size {size}, "
                f"got {h.hexdigest()} and {n}",
            )
        os.replace(tmp_path, self.blob_path(sha256))

    # repos -----------------------------------------------------------------------------------
    def repo_dir(self, rtype: str, repo_id: str) -> Path:
        """The folder of a repo's metadata, refs and commits."""
        return self.root / "repos" / f"{rtype}s" / repo_id

    def lock(self, rtype: str, repo_id: str) -> threading.RLock:
        """The repo's lock: a ref update reads and replaces ``refs.json`` under it."""
        with self._locks_guard:
            return self._locks.setdefault((rtype, repo_id), threading.RLock())

    def meta(self, rtype: str, repo_id: str) -> dict | None:
        """The repo's ``repo.json`` (owner, visibility, gating), None when the repo does not exist."""
        p = self.repo_dir(rtype, repo_id) / "repo.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def set_meta(self, rtype: str, repo_id: str, meta: dict) -> None:
        """Replace the repo's ``repo.json`` atomically."""
        _write_json_atomic(self.repo_dir(rtype, repo_id) / "repo.json", meta)

    def refs(self, rtype: str, repo_id: str) -> dict:
        """The repo's branches, tags and pull requests (name -> commit id), empty for a missing repo."""
        p = self.repo_dir(rtype, repo_id) / "refs.json"
        return json.loads(p.read_text()) if p.is_file() else {"branches": {}, "tags": {}, "prs": {}}

    def set_refs(self, rtype: str, repo_id: str, refs: dict) -> None:
        """Replace the repo's ``refs.json`` atomically: the step that publishes a commit."""
        _write_json_atomic(self.repo_dir(rtype, repo_id) / "refs.json", refs)

    def commit(self, rtype: str, repo_id: str, oid: str) -> dict | None:
        """A commit's snapshot (parents, files, title, message, date, authors), None when unknown."""
        p = self.repo_dir(rtype, repo_id) / "commits" / f"{oid}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def known_commit(self, rtype: str, repo_id: str, oid: str) -> dict:
        """The snapshot of a commit a ref or a parent link names (written before anything names it)."""
        commit = self.commit(rtype, repo_id, oid)
        if commit is None:
            raise RuntimeError(f"{rtype} {repo_id}: commit {oid} is named but missing from the store")
        return commit

    def write_commit(
        self, rtype: str, repo_id: str, parents: list[str], files: dict, title: str, message: str, author: str
    ) -> dict:
        """Write a new commit's snapshot (its id hashes the content and a nonce); no ref moves yet."""
        body = {
            "parents": parents,
            "files": files,
            "title": title,
            "message": message,
            "date": _now(),
            "authors": [author],
            "nonce": secrets.token_hex(8),
        }
        body["id"] = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        _write_json_atomic(self.repo_dir(rtype, repo_id) / "commits" / f"{body['id']}.json", body)
        return body

    def resolve(self, rtype: str, repo_id: str, rev: str) -> str | None:
        """A branch, tag, ``refs/heads|tags/x``, ``refs/pr/N`` or commit id -> commit id."""
        refs = self.refs(rtype, repo_id)
        if rev.startswith("refs/pr/"):
            return refs["prs"].get(rev[len("refs/pr/") :])
        if rev.startswith("refs/heads/"):
            return refs["branches"].get(rev[len("refs/heads/") :])
        if rev.startswith("refs/tags/"):
            return refs["tags"].get(rev[len("refs/tags/") :])
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        if _SHA40.match(rev) and self.commit(rtype, repo_id, rev) is not None:
            return rev
        return None


def _parse_commit(raw: bytes) -> tuple[dict, list[dict]]:
    """An ndjson commit payload -> (its header's value, the operation lines after it)."""
    try:
        lines = [json.loads(ln) for ln in raw.decode().splitlines() if ln.strip()]
    except ValueError as e:
        raise HubError(400, "Invalid ndjson commit payload") from e
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "The first line of a commit must be its header")
    return lines[0].get("value", {}), lines[1:]


def _file_entry(storage: Storage, data: bytes | None, sha256: str, size: int, lfs: bool) -> dict:
    if lfs:
        return {"sha256": sha256, "size": size, "lfs": True, "oid": git_blob_sha1(lfs_pointer(sha256, size))}
    if data is None:
        data = storage.blob_path(sha256).read_bytes()
    return {"sha256": sha256, "size": size, "lfs": False, "oid": git_blob_sha1(data)}
