"""The Hub test server's upload routes: preupload, the LFS batch and transfer API, commits."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from hf_transfer.testing.hub_cards import card_metadata
from hf_transfer.testing.hub_common import _PREFIX, _SHA40, LFS_PATTERNS, LFS_SIZE_THRESHOLD, HubError
from hf_transfer.testing.hub_storage import Storage, _file_entry, _parse_commit

if TYPE_CHECKING:  # annotations only
    from hf_transfer.testing.hub_http import _Handler


class UploadRoutes:
    """Upload routes of :class:`~hf_transfer.testing.hub_server.HubTestServer` (a mixin over its storage and faults)."""

    # what the routes use of the server
    storage: Storage
    default_user: str
    multipart_threshold: int
    multipart_chunk_size: int
    _tickets: dict[str, dict]  # LFS upload ticket -> the object it grants (oid, size, parts received)
    _tickets_lock: threading.Lock

    if TYPE_CHECKING:

        def _repo_meta(self, h: _Handler, rtype: str, repo_id: str, write: bool = False) -> dict: ...

        def _fault(self, h: _Handler, point: str) -> None: ...

    # uploads -------------------------------------------------------------------------------------
    def _is_lfs(self, files: dict, path: str, size: int, sample: bytes) -> bool:
        if size == 0:
            return False
        if size >= LFS_SIZE_THRESHOLD or b"\0" in sample:
            return True
        patterns = LFS_PATTERNS
        ga = files.get(".gitattributes")
        if ga is not None:
            text = self.storage.blob_path(ga["sha256"]).read_text(errors="replace")
            patterns = [ln.split()[0] for ln in text.splitlines() if "filter=lfs" in ln and ln.strip()]
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)

    def _preupload(self, h: _Handler, rtype: str, repo_id: str, rev: str, q: dict) -> None:
        body = h._json_body()
        oid = self.storage.resolve(rtype, repo_id, rev)
        if oid is None and not q.get("create_pr"):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = self.storage.known_commit(rtype, repo_id, oid)["files"] if oid else {}
        out = []
        for f in body.get("files", []):
            sample = base64.b64decode(f.get("sample") or "")
            lfs = self._is_lfs(files, f["path"], int(f.get("size", 0)), sample)
            mode = "lfs" if lfs else "regular"
            old = files.get(f["path"])
            remote = None
            if old is not None and old["lfs"] == lfs:
                remote = old["sha256"] if lfs else old["oid"]
            out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote})
        h._send_json({"files": out, "commitOid": oid})

    def _lfs_batch(self, h: _Handler, rtype: str, repo_id: str) -> None:
        self._fault(h, "lfs_batch")
        self._repo_meta(h, rtype, repo_id, write=True)
        body = h._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is served")
        transfers = body.get("transfers") or ["basic"]
        multipart = "multipart" in transfers
        base = f"http://{h.headers.get('Host')}"
        objects, chosen = [], "basic"
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append(
                    {
                        "oid": oid,
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "Invalid oid or size"},
                    }
                )
                continue
            if self.storage.has_blob(oid, size):
                objects.append({"oid": oid, "size": size})
                continue
            ticket = secrets.token_urlsafe(16)
            with self._tickets_lock:
                self._tickets[ticket] = {"oid": oid, "size": size, "parts": {}}
            actions: dict = {"verify": {"href": f"{base}/_lfs/verify/{ticket}", "header": {}}}
            if multipart and size >= self.multipart_threshold:
                chosen = "multipart"
                n = -(-size // self.multipart_chunk_size)
                header = {"chunk_size": str(self.multipart_chunk_size)}
                header.update({str(i): f"{base}/_lfs/part/{ticket}/{i}" for i in range(1, n + 1)})
                actions["upload"] = {"href": f"{base}/_lfs/complete/{ticket}", "header": header}
            else:
                actions["upload"] = {"href": f"{base}/_lfs/upload/{ticket}", "header": {}}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        h._send(
            200,
            json.dumps({"transfer": chosen, "objects": objects, "hash_algo": "sha256"}).encode(),
            ctype="application/vnd.git-lfs+json",
        )

    def _ticket(self, ticket: str) -> dict:
        with self._tickets_lock:
            t = self._tickets.get(ticket)
        if t is None:
            raise HubError(404, "Unknown or expired upload ticket")
        return t

    def _lfs_transfer(self, h: _Handler, method: str, segs: list[str]) -> None:
        """Upload URLs handed out by the batch API (no Authorization header: the ticket is the grant)."""
        if len(segs) == 2 and segs[0] == "upload" and method == "PUT":
            self._fault(h, "lfs_upload")
            t = self._ticket(segs[1])
            fd, tmp = tempfile.mkstemp(dir=self.storage.tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(h._body())
            self.storage.put_file(Path(tmp), t["oid"], t["size"])
            return h._send(200, b"", ctype="text/plain")
        if len(segs) == 3 and segs[0] == "part" and method == "PUT":
            self._fault(h, "lfs_upload")
            t = self._ticket(segs[1])
            data = h._body()
            etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
            t["parts"][int(segs[2])] = (etag, data)
            return h._send(200, b"", headers={"ETag": f'"{etag}"'}, ctype="text/plain")
        if len(segs) == 2 and segs[0] == "complete" and method == "POST":
            t = self._ticket(segs[1])
            body = h._json_body()
            parts = sorted(body.get("parts", []), key=lambda p: p["partNumber"])
            chunks = []
            for p in parts:
                etag, data = t["parts"].get(p["partNumber"], (None, b""))
                if etag is None or p["etag"].strip('"') != etag:
                    raise HubError(400, f"Part {p['partNumber']} missing or etag mismatch")
                chunks.append(data)
            fd, tmp = tempfile.mkstemp(dir=self.storage.tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join(chunks))
            self.storage.put_file(Path(tmp), t["oid"], t["size"])
            t["parts"].clear()
            return h._send_json({})
        if len(segs) == 2 and segs[0] == "verify" and method == "POST":
            self._fault(h, "lfs_verify")
            t = self._ticket(segs[1])
            body = h._json_body()
            if body.get("oid") != t["oid"] or not self.storage.has_blob(t["oid"], t["size"]):
                raise HubError(404, "Object not found or size mismatch")
            return h._send_json({})
        raise HubError(404, "Not found")

    # commits -------------------------------------------------------------------------------------
    def _commit(self, h: _Handler, rtype: str, repo_id: str, meta: dict, rev: str, q: dict) -> None:
        raw = h._body()  # read the whole payload before any fault, like a real server would
        self._fault(h, "commit")
        header, operations = _parse_commit(raw)
        create_pr = q.get("create_pr", ["0"])[0] in ("1", "true")
        with self.storage.lock(rtype, repo_id):
            refs = self.storage.refs(rtype, repo_id)
            target_kind, target, head = self._commit_target(rtype, repo_id, refs, rev, create_pr)
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(self.storage.known_commit(rtype, repo_id, head)["files"])
            readme_changed = False
            for op in operations:
                readme_changed |= self._apply_operation(files, op)
            if readme_changed:
                self._check_readme(files)
            commit = self.storage.write_commit(
                rtype,
                repo_id,
                [head],
                files,
                header.get("summary") or "Commit",
                header.get("description") or "",
                h._user or self.default_user,
            )
            pr_url = self._move_ref(h, rtype, repo_id, refs, target_kind, target, commit["id"], create_pr)
            self.storage.set_refs(rtype, repo_id, refs)  # the single atomic step that publishes the commit
        base = f"http://{h.headers.get('Host')}/{_PREFIX[rtype]}{repo_id}"
        h._send_json(
            {
                "success": True,
                "commitOid": commit["id"],
                "commitUrl": f"{base}/commit/{commit['id']}",
                "commitMessage": commit["title"],
                "pullRequestUrl": pr_url,
            }
        )

    def _commit_target(self, rtype: str, repo_id: str, refs: dict, rev: str, create_pr: bool) -> tuple[str, str, str]:
        """``(kind, name, head)`` of what a commit to ``rev`` moves: a PR, a branch, or (a PR on) a commit sha."""
        if rev.startswith("refs/pr/"):
            kind, target = "prs", rev[len("refs/pr/") :]
        elif rev.startswith("refs/heads/"):
            kind, target = "branches", rev[len("refs/heads/") :]
        elif rev in refs["branches"]:
            kind, target = "branches", rev
        elif _SHA40.match(rev) and create_pr and self.storage.commit(rtype, repo_id, rev):
            kind, target = "sha", rev
        else:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        head = rev if kind == "sha" else refs[kind].get(target)
        if head is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return kind, target, head

    def _apply_operation(self, files: dict, op: dict) -> bool:
        """Apply one ndjson commit operation to ``files`` (path -> entry); True when it wrote README.md."""
        key, v = op.get("key"), op.get("value", {})
        path = str(v.get("path", "")).strip("/")
        if key in ("file", "lfsFile", "deletedFile") and (not path or ".." in path.split("/")):
            raise HubError(400, f"Invalid path: {path!r}")
        if key == "file":
            if v.get("encoding", "base64") != "base64":
                raise HubError(400, "Only base64 file content is accepted")
            data = base64.b64decode(v.get("content", ""))
            files[path] = _file_entry(self.storage, data, self.storage.put_bytes(data), len(data), False)
            return path == "README.md"
        if key == "lfsFile":
            oid, size = v.get("oid"), v.get("size")
            if v.get("algo", "sha256") != "sha256" or not self.storage.has_blob(str(oid), size):
                raise HubError(
                    422,
                    f"Your push was rejected because an LFS pointer pointed to a file "
                    f"that does not exist: {path} ({oid})",
                )
            files[path] = _file_entry(self.storage, None, oid, size, True)
            return path == "README.md"
        if key == "deletedFile":
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del files[path]
            return False
        if key == "deletedFolder":
            prefix = path + "/" if path else ""
            gone = [p for p in files if p.startswith(prefix)]
            if not gone:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in gone:
                del files[p]
            return False
        raise HubError(400, f"Unsupported commit operation: {key}")

    def _check_readme(self, files: dict) -> None:
        """The Hub refuses a commit whose (non-LFS) README.md has invalid metadata."""
        if files["README.md"]["lfs"]:
            return
        text = self.storage.blob_path(files["README.md"]["sha256"]).read_text(errors="replace")
        errors = card_metadata(text)[1]
        if errors:
            raise HubError(400, "Invalid metadata in README.md: " + "; ".join(errors))

    def _move_ref(
        self, h: _Handler, rtype: str, repo_id: str, refs: dict, kind: str, target: str, commit_id: str, create_pr: bool
    ) -> str | None:
        """Point the target ref (or a new PR) at ``commit_id`` in ``refs``; returns the PR's URL, if any."""
        discussions = f"http://{h.headers.get('Host')}/{_PREFIX[rtype]}{repo_id}/discussions"
        if create_pr and kind != "prs":
            num = str(max([int(n) for n in refs["prs"]] + [0]) + 1)
            refs["prs"][num] = commit_id
            return f"{discussions}/{num}"
        refs[kind][target] = commit_id
        return f"{discussions}/{target}" if create_pr else None
