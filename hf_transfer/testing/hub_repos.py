"""The Hub test server's repo routes: create, settings, info, tree, branches, tags, card validation and
downloads."""

from __future__ import annotations

import hashlib
import re
import shutil
from typing import TYPE_CHECKING

from hf_transfer.testing.hub_cards import card_metadata
from hf_transfer.testing.hub_common import _PREFIX, DEFAULT_GITATTRIBUTES, SPACE_SDKS, HubError, _now, lfs_pointer
from hf_transfer.testing.hub_storage import Storage, _file_entry

if TYPE_CHECKING:  # annotations only
    from hf_transfer.testing.hub_http import _Handler


class RepoRoutes:
    """Repo routes of :class:`~hf_transfer.testing.hub_server.HubTestServer` (a mixin over its storage and faults)."""

    # what the routes use of the server
    storage: Storage
    host: str
    port: int

    if TYPE_CHECKING:

        @staticmethod
        def _repo_id(repo_id: str) -> str: ...

        def _can_write(self, user: str | None, namespace: str) -> bool: ...

        def _repo_meta(self, h: _Handler, rtype: str, repo_id: str, write: bool = False) -> dict: ...

        def _check_gated(self, h: _Handler, meta: dict, path: str) -> None: ...

        def _fault(self, h: _Handler, point: str) -> None: ...

        def set_repo_settings(
            self,
            repo_id: str,
            repo_type: str = "model",
            *,
            private: bool | None = None,
            gated: bool | str | None = None,
            grant: list[str] | None = None,
        ) -> None:
            """Change a repo's visibility, gating or grants (defined by the client helpers)."""

    # repos ---------------------------------------------------------------------------------------
    def _create(self, rtype: str, repo_id: str, private: bool, owner: str, sdk: str | None = None) -> bool:
        with self.storage.lock(rtype, repo_id):
            if self.storage.meta(rtype, repo_id) is not None:
                return False
            self.storage.set_meta(
                rtype,
                repo_id,
                {
                    "id": repo_id,
                    "type": rtype,
                    "private": bool(private),
                    "owner": owner,
                    "gated": False,
                    "createdAt": _now(),
                    **({"sdk": sdk} if rtype == "space" else {}),
                },
            )
            data = DEFAULT_GITATTRIBUTES.encode()
            sha = self.storage.put_bytes(data)
            c = self.storage.write_commit(
                rtype,
                repo_id,
                [],
                {".gitattributes": _file_entry(self.storage, data, sha, len(data), False)},
                "initial commit",
                "",
                owner,
            )
            self.storage.set_refs(rtype, repo_id, {"branches": {"main": c["id"]}, "tags": {}, "prs": {}})
            return True

    def _repos(self, h: _Handler, method: str, segs: list[str]) -> None:
        body = h._json_body()
        rtype = body.get("type") or "model"
        if rtype not in _PREFIX:
            raise HubError(400, f"Repo type {rtype!r} is not served by the test server")
        name = body.get("name", "")
        if h._user is None:  # as the Hub: anonymous writes are 401 whatever the namespace
            raise HubError(401, "You must be authenticated to create or delete a repo")
        ns = body.get("organization") or h._user
        repo_id = self._repo_id(f"{ns}/{name}")
        if not self._can_write(h._user, ns):
            raise HubError(403, f"You don't have the rights to create a {rtype} under the namespace {ns!r}")
        url = f"http://{h.headers.get('Host', f'{self.host}:{self.port}')}/{_PREFIX[rtype]}{repo_id}"
        if segs == ["create"] and method == "POST":
            sdk = body.get("sdk")
            if rtype == "space" and sdk not in SPACE_SDKS:  # as the Hub: a Space names its sdk
                raise HubError(400, f"A Space needs an sdk, one of {list(SPACE_SDKS)}; got {sdk!r}")
            if rtype != "space" and sdk:
                raise HubError(400, f"sdk is for Spaces, not a {rtype} repo")
            private = body.get("private", body.get("visibility") == "private")
            if not self._create(rtype, repo_id, bool(private), ns, sdk):
                return h._send_json(
                    {"error": "You already created this repo", "url": url},
                    409,
                    {"X-Error-Message": "You already created this repo"},
                )
            return h._send_json({"url": url, "name": repo_id, "id": repo_id})
        if segs == ["delete"] and method == "DELETE":
            with self.storage.lock(rtype, repo_id):
                if self.storage.meta(rtype, repo_id) is None:
                    raise HubError(404, "Repository not found", "RepoNotFound")
                shutil.rmtree(self.storage.repo_dir(rtype, repo_id))
            return h._send_json({})
        raise HubError(404, "Not found")

    def _settings(self, h: _Handler, rtype: str, repo_id: str) -> None:
        self._repo_meta(h, rtype, repo_id, write=True)
        body = h._json_body()
        private = body.get("private")
        if "visibility" in body:
            private = body["visibility"] == "private"
        self.set_repo_settings(repo_id, rtype, private=private, gated=body.get("gated"))
        return h._send_json({})

    def _files(self, rtype: str, repo_id: str, rev: str) -> tuple[str, dict]:
        oid = self.storage.resolve(rtype, repo_id, rev)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return oid, self.storage.known_commit(rtype, repo_id, oid)["files"]

    def _repo_info(self, h: _Handler, rtype: str, repo_id: str, meta: dict, rev: str) -> None:
        oid, files = self._files(rtype, repo_id, rev)
        commit = self.storage.known_commit(rtype, repo_id, oid)
        siblings = []
        for path, e in sorted(files.items()):
            s = {"rfilename": path, "size": e["size"], "blobId": e["oid"]}
            if e["lfs"]:
                s["lfs"] = {
                    "sha256": e["sha256"],
                    "size": e["size"],
                    "pointerSize": len(lfs_pointer(e["sha256"], e["size"])),
                }
            siblings.append(s)
        card = {}
        if "README.md" in files and not files["README.md"]["lfs"]:
            text = self.storage.blob_path(files["README.md"]["sha256"]).read_text(errors="replace")
            card = card_metadata(text)[0] or {}
        h._send_json(
            {
                "_id": hashlib.sha1(f"{rtype}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "author": meta["owner"],
                "sha": oid,
                "private": meta.get("private", False),
                "gated": meta.get("gated", False),
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": list(card.get("tags") or []) if isinstance(card.get("tags"), list) else [],
                "cardData": card,
                "siblings": siblings,
                "createdAt": meta.get("createdAt", _now()),
                "lastModified": commit["date"],
                "usedStorage": sum(e["size"] for e in files.values()),
                **({"sdk": meta.get("sdk")} if rtype == "space" else {}),
            }
        )

    @staticmethod
    def _entry(files: dict, path: str) -> dict | None:
        """The tree entry of a file or directory, or None."""
        if path in files:
            e = files[path]
            out = {"type": "file", "path": path, "size": e["size"], "oid": e["oid"]}
            if e["lfs"]:
                out["lfs"] = {
                    "oid": e["sha256"],
                    "size": e["size"],
                    "pointerSize": len(lfs_pointer(e["sha256"], e["size"])),
                }
            return out
        prefix = path + "/" if path else ""
        inside = sorted(f"{p}:{e['oid']}" for p, e in files.items() if p.startswith(prefix))
        if not inside:
            return None
        return {
            "type": "directory",
            "path": path,
            "size": 0,
            "oid": hashlib.sha1("\n".join(inside).encode()).hexdigest(),
        }

    def _tree(self, h: _Handler, rtype: str, repo_id: str, rev: str, path: str, q: dict) -> None:
        _, files = self._files(rtype, repo_id, rev)
        recursive = q.get("recursive", ["false"])[0].lower() in ("1", "true")
        root = self._entry(files, path) if path else {"type": "directory"}
        if root is None or root["type"] != "directory":
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        prefix = path + "/" if path else ""
        names: set[str] = set()
        for p in files:
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            stop = len(parts) if recursive else 1
            for i in range(1, stop + 1):
                names.add(prefix + "/".join(parts[:i]))
        entries = []
        for n in names:
            entry = self._entry(files, n)
            assert entry is not None, "every name is a file's path or one of its folders"
            entries.append(entry)
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        h._send_json(entries)

    def _branch(self, h: _Handler, method: str, rtype: str, repo_id: str, name: str) -> None:
        self._fault(h, "branch")
        with self.storage.lock(rtype, repo_id):
            refs = self.storage.refs(rtype, repo_id)
            if method == "DELETE":
                if name not in refs["branches"]:
                    raise HubError(404, f"Branch {name} not found", "RevisionNotFound")
                if name == "main":
                    raise HubError(403, "Cannot delete the main branch")
                del refs["branches"][name]
            elif method == "POST":
                if name in refs["branches"]:
                    raise HubError(409, f"Reference refs/heads/{name} already exists")
                body = h._json_body()
                start = body.get("startingPoint") or "main"
                oid = self.storage.resolve(rtype, repo_id, start)
                if oid is None:
                    raise HubError(404, f"Invalid rev id: {start}", "RevisionNotFound")
                if body.get("emptyBranch"):
                    c = self.storage.write_commit(rtype, repo_id, [], {}, "empty branch", "", h._user or "")
                    oid = c["id"]
                refs["branches"][name] = oid
            else:
                raise HubError(405, "Method not allowed")
            self.storage.set_refs(rtype, repo_id, refs)
        h._send_json({})

    def _tag(self, h: _Handler, method: str, rtype: str, repo_id: str, rev: str) -> None:
        with self.storage.lock(rtype, repo_id):
            refs = self.storage.refs(rtype, repo_id)
            if method == "DELETE":
                if rev not in refs["tags"]:
                    raise HubError(404, f"Tag {rev} not found", "RevisionNotFound")
                del refs["tags"][rev]
            else:
                tag = h._json_body().get("tag")
                if not tag:
                    raise HubError(400, "Missing tag name")
                if tag in refs["tags"]:
                    raise HubError(409, f"Tag {tag} already exists")
                oid = self.storage.resolve(rtype, repo_id, rev)
                if oid is None:
                    raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                refs["tags"][tag] = oid
            self.storage.set_refs(rtype, repo_id, refs)
        h._send_json({})

    # card validation -----------------------------------------------------------------------------
    def _validate_yaml(self, h: _Handler) -> None:
        body = h._json_body()
        content = body.get("content")
        if not isinstance(content, str):
            raise HubError(400, "Missing content")
        _, errors = card_metadata(content)
        status = 400 if errors else 200
        h._send_json({"errors": [{"message": e} for e in errors], "warnings": []}, status)

    # downloads -----------------------------------------------------------------------------------
    def _resolve(self, h: _Handler, rtype: str, repo_id: str, rev: str, path: str) -> None:
        self._fault(h, "resolve")
        meta = self._repo_meta(h, rtype, repo_id)
        oid = self.storage.resolve(rtype, repo_id, rev)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = self.storage.known_commit(rtype, repo_id, oid)["files"]
        e = files.get(path)
        if e is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": oid})
        self._check_gated(h, meta, path)
        etag = e["sha256"] if e["lfs"] else e["oid"]
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        size = e["size"]
        start, end, status = 0, size - 1, 200
        rng = h.headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (not m.group(1) and not m.group(2)):
                raise HubError(416, "Invalid range", headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        h.send_response(status)
        headers.setdefault("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h._status = status
        if h.command == "HEAD" or length == 0:
            return
        with open(self.storage.blob_path(e["sha256"]), "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    break
                h.wfile.write(chunk)
                left -= len(chunk)
