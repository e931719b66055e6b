"""A Hub-compatible HTTP server for offline, end-to-end tests with the real clients.

Why it exists
-------------
Pushing to and pulling from the Hugging Face Hub is the part of a transfer-learning pipeline that
is hardest to test: mocks of ``huggingface_hub`` drift from what ``transformers.push_to_hub``,
``datasets.Dataset.push_to_hub``, ``load_dataset`` or ``timm.create_model("hf-hub:...")`` really
send, and the real Hub needs a network, credentials and leaves litter behind. This module serves
the subset of the Hub HTTP API those clients use on 127.0.0.1, so a test points ``HF_ENDPOINT`` at it
and drives the *unmodified* clients through a whole push/pull round trip - including the failure modes
(5xx on upload, a connection dropped at commit, a concurrent push) that matter for "a failed push leaves
the remote unchanged". It is useful to anyone who wants to test their own pipeline offline, not just to
this project.

What it implements
------------------
Models and datasets: ``whoami-v2``, repo create/delete/settings, repo info (``siblings`` with LFS
info), tree (recursive or not, per path), paths-info, refs, commits, branches, tags,
``validate-yaml`` (a real YAML parse of the card's front matter plus ``model-index`` checks),
preupload (LFS for ``.gitattributes`` patterns, binary samples and files of 10 MB or more), the LFS
batch API (basic transfer and multipart), upload with sha256 check, verify, the ndjson commit
(``file``/``lfsFile``/``deletedFile``/``deletedFolder``, ``parentCommit`` -> 412, ``create_pr`` ->
``refs/pr/N``), and ``resolve`` (HEAD/GET, ``Range`` -> 206, ETag = sha256 for LFS files and git
blob sha1 for regular ones, ``X-Repo-Commit``, 404 + ``X-Error-Code``). Every route accepts a
branch, ``refs/pr/N``, a tag or a 40-hex commit id, URL-encoded or not (routing is done on the raw
path). Xet is not served: clients must run with ``HF_HUB_DISABLE_XET=1`` (the client, not the
server, decides to use Xet).

Storage lives under ``root``: ``blobs/<sha256>`` (content addressed, shared by all repos) and
``repos/<type>s/<ns>/<name>/`` with ``repo.json`` (visibility, owner), ``refs.json`` (branches,
tags, pull requests) and ``commits/<id>.json`` (full snapshots: path -> sha256/size/lfs/git oid).
A commit writes its blobs and snapshot first and then replaces ``refs.json`` atomically under a
per-repo lock, so it lands entirely or not at all. A server restarted on the same root serves the
same repos.

Access: with ``tokens=None`` every request acts as ``default_user`` (single-user server). With
``tokens={"hf_...": "alice"}`` requests are anonymous unless they carry a known Bearer token; an
unknown token gets 401 ``Invalid credentials in Authorization header``; private repos answer 401
``RepoNotFound`` without a token and 404 ``RepoNotFound`` to other users (as the Hub does, a
missing repo looks the same); gated repos answer 401/403 ``GatedRepo`` on file downloads to users
not granted access; writes need a token of the namespace owner (or an org member, see ``orgs``).
Tokens are never logged: the access log (``log=True``, ``server.requests``) has no headers and
redacts anything that looks like a token.

Fault injection (``server.faults`` or ``POST /_test/faults``) for reliability tests, counted per
point: ``server.faults.add("lfs_upload", status=503, times=2)`` fails the next two LFS uploads
(clients retry 5xx up to 5 times; a fault sends ``Retry-After: 0`` by default so each retry waits
~1 s instead of 1-8 s); ``times=None`` makes it persistent; ``skip=N`` lets N requests through
first; ``drop=True`` closes the socket without an answer (a dropped commit does NOT apply);
``delay=`` sleeps first. Points: ``lfs_batch``, ``lfs_upload`` (single PUT and multipart parts),
``lfs_verify``, ``preupload``, ``commit``, ``branch`` (create/delete), ``resolve``, ``repo_info``, ``tree``,
``any``.

Holds (in-process only, for race tests): ``hold = server.faults.hold("commit")`` parks the next request that
reaches the point (before it is applied) until ``hold.release()``; ``hold.wait_reached()`` says it arrived. A
held request is then served as usual: a hold is latency (a slow link or a busy server), never a failure, so
a test can order two clients' requests exactly as a real race would. ``faults.clear()`` releases every hold.

Usage::

    from hf_transfer.testing import HubTestServer
    with HubTestServer(tmp_dir, tokens={"hf_abc": "alice"}) as server:
        env = server.subprocess_env(home=tmp_home, token="hf_abc")  # for a child process, or
        with server.client_environment(token="hf_abc"):                # for this process
            HfApi().create_repo("alice/demo")

By hand: ``python -m hf_transfer.testing.hub_server --root DIR --port 0`` prints the endpoint URL.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import fnmatch
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
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
_PREFIX = {"model": "", "dataset": "datasets/"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
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

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})


class _Drop(Exception):
    """Close the connection without answering."""


# --------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------
class Hold:
    """Requests parked at a point until :meth:`release`: the interleaving of a race, made exact."""

    def __init__(self, point: str, times: int, path: str | None, timeout: float) -> None:
        self.point, self.times, self.path, self.timeout = point, times, path, timeout
        self.held = 0  # requests parked so far
        self.reached = threading.Event()
        self._released = threading.Event()

    def wait_reached(self, timeout: float = 60.0) -> bool:
        """True once a request is parked here (False after ``timeout`` seconds)."""
        return self.reached.wait(timeout)

    def release(self) -> None:
        """Let the parked requests (and any later ones this hold would take) go on."""
        self._released.set()

    def _park(self) -> None:
        self.reached.set()
        if not self._released.wait(self.timeout):  # a test that forgot to release must not hang the server
            self._released.set()


class Faults:
    """Count-based fault plan, thread safe. See the module docstring for the points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[dict] = []
        self.seen: dict[str, int] = {}  # requests that reached each point
        self.fired: dict[str, int] = {}  # faults served at each point
        self._holds: list[Hold] = []

    def hold(self, point: str, *, times: int = 1, path: str | None = None, timeout: float = 120.0) -> Hold:
        """Park the next ``times`` requests at ``point`` (``path``: a regex on the request path) until the
        returned hold is released; they are then served normally. ``timeout``: released by itself after it."""
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {point!r}; expected one of {FAULT_POINTS}")
        hold = Hold(point, times, path, timeout)
        with self._lock:
            self._holds.append(hold)
        return hold

    def wait_if_held(self, point: str, path: str) -> None:
        """Called by the server at each point, before :meth:`check`: parks the request if a hold takes it."""
        with self._lock:
            hold = next(
                (
                    h
                    for h in self._holds
                    if h.point in (point, "any") and h.held < h.times and not (h.path and not re.search(h.path, path))
                ),
                None,
            )
            if hold is not None:
                hold.held += 1
        if hold is not None:
            hold._park()

    def add(
        self,
        point: str,
        *,
        status: int = 503,
        times: int | None = 1,
        skip: int = 0,
        drop: bool = False,
        delay: float = 0.0,
        retry_after: int | None = 0,
        code: str | None = None,
        message: str | None = None,
        path: str | None = None,
    ) -> dict:
        """Fail requests at ``point``: let ``skip`` through, then fail ``times`` (None: forever).

        ``path`` (a regex) restricts the rule to matching request paths.
        """
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {point!r}; expected one of {FAULT_POINTS}")
        rule = {
            "point": point,
            "status": int(status),
            "times": times,
            "skip": int(skip),
            "drop": bool(drop),
            "delay": float(delay),
            "retry_after": retry_after,
            "code": code,
            "message": message or f"Injected fault at {point}",
            "path": path,
            "fired": 0,
        }
        with self._lock:
            self._rules.append(rule)
        return rule

    def release_holds(self) -> None:
        with self._lock:
            for hold in self._holds:
                hold.release()
            self._holds.clear()

    def clear(self) -> None:
        self.release_holds()
        with self._lock:
            self._rules.clear()
            self.seen.clear()
            self.fired.clear()

    def rules(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._rules]

    def snapshot(self) -> dict:
        with self._lock:
            return {"rules": [dict(r) for r in self._rules], "seen": dict(self.seen), "fired": dict(self.fired)}

    def check(self, point: str, path: str) -> dict | None:
        """Called by the server at each point; returns the rule to apply, if any."""
        with self._lock:
            self.seen[point] = self.seen.get(point, 0) + 1
            for rule in self._rules:
                if rule["point"] not in (point, "any"):
                    continue
                if rule["path"] and not re.search(rule["path"], path):
                    continue
                if rule["skip"] > 0:
                    rule["skip"] -= 1
                    continue
                if rule["times"] is not None and rule["fired"] >= rule["times"]:
                    continue
                rule["fired"] += 1
                self.fired[point] = self.fired.get(point, 0) + 1
                return dict(rule)
        return None


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------
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
        return self.blobs / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        p = self.blob_path(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def put_bytes(self, data: bytes) -> str:
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
        return self.root / "repos" / f"{rtype}s" / repo_id

    def lock(self, rtype: str, repo_id: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault((rtype, repo_id), threading.RLock())

    def meta(self, rtype: str, repo_id: str) -> dict | None:
        p = self.repo_dir(rtype, repo_id) / "repo.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def set_meta(self, rtype: str, repo_id: str, meta: dict) -> None:
        _write_json_atomic(self.repo_dir(rtype, repo_id) / "repo.json", meta)

    def refs(self, rtype: str, repo_id: str) -> dict:
        p = self.repo_dir(rtype, repo_id) / "refs.json"
        return json.loads(p.read_text()) if p.is_file() else {"branches": {}, "tags": {}, "prs": {}}

    def set_refs(self, rtype: str, repo_id: str, refs: dict) -> None:
        _write_json_atomic(self.repo_dir(rtype, repo_id) / "refs.json", refs)

    def commit(self, rtype: str, repo_id: str, oid: str) -> dict | None:
        p = self.repo_dir(rtype, repo_id) / "commits" / f"{oid}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def write_commit(
        self, rtype: str, repo_id: str, parents: list[str], files: dict, title: str, message: str, author: str
    ) -> dict:
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


# --------------------------------------------------------------------------------------------
# Model-card metadata checks (validate-yaml and commits that carry README.md)
# --------------------------------------------------------------------------------------------
def card_metadata(content: str) -> tuple[dict | None, list[str]]:
    """Parse the YAML front matter of a card; returns (metadata or None, errors)."""
    import yaml  # pyyaml; imported lazily to keep the module importable without it

    m = re.match(r"^---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*$", content, re.S | re.M)
    if not content.startswith("---") or m is None:
        return None, []
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        return None, [f"Invalid YAML in the metadata: {e}".replace("\n", " ")]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return None, ["The metadata must be a YAML mapping"]
    return data, validate_metadata(data)


def validate_metadata(meta: dict) -> list[str]:
    errors: list[str] = []

    def str_or_list(key: str) -> None:
        v = meta.get(key)
        if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            errors.append(f'"{key}" must be a string or an array of strings')

    for key in ("license", "datasets", "tags", "base_model", "language", "metrics"):
        str_or_list(key)
    for key in ("library_name", "pipeline_tag", "base_model_relation"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            errors.append(f'"{key}" must be a string')
    if "model-index" not in meta:
        return errors
    mi = meta["model-index"]
    if not isinstance(mi, list) or not mi:
        return errors + ['"model-index" must be a non-empty array']
    for i, model in enumerate(mi):
        where = f'"model-index[{i}]"'
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f"{where}.name must be a string")
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errors.append(f"{where}.results must be an array")
            continue
        for j, res in enumerate(results):
            w = f"{where}.results[{j}]"
            if not isinstance(res, dict):
                errors.append(f"{w} must be an object")
                continue
            task = res.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{w}.task.type must be a string")
            ds = res.get("dataset")
            if not isinstance(ds, dict) or not isinstance(ds.get("name"), str) or not isinstance(ds.get("type"), str):
                errors.append(f"{w}.dataset must have a string name and type")
            metrics = res.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{w}.metrics must be a non-empty array")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f"{w}.metrics[{k}] must have a string type and a value")
                elif not isinstance(metric["value"], (int, float, str)) or isinstance(metric["value"], bool):
                    errors.append(f"{w}.metrics[{k}].value must be a number or a string")
    return errors


# --------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HubTestServer/1.0"
    hub: HubTestServer  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # our own access log (without headers) is written in _dispatch

    def setup(self) -> None:
        super().setup()
        self.hub._connections.add(self.connection)

    def finish(self) -> None:
        self.hub._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # plumbing ------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if hasattr(self, "_cached_body"):
            return self._cached_body
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._cached_body = body
        return body

    def _json_body(self) -> Any:
        raw = self._body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise HubError(400, "Invalid JSON body") from e

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", ctype)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _send_json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self, method: str) -> None:
        self._status = 0
        self._user: str | None = None
        self.__dict__.pop("_cached_body", None)  # one handler serves every request of a kept-alive connection
        t0 = time.monotonic()
        raw_path, _, query = self.path.partition("?")
        try:
            try:
                self.hub._route(self, method, raw_path, urllib.parse.parse_qs(query, keep_blank_values=True))
            except HubError as e:
                if method in ("POST", "PUT"):
                    self._body()  # drain the request so that the kept-alive connection stays in sync
                headers = {"X-Error-Message": e.message, **e.headers}
                if e.code:
                    headers["X-Error-Code"] = e.code
                self._send_json({"error": e.message}, e.status, headers)
        except _Drop:
            self._status = -1
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except Exception as e:  # a bug in the server: answer 500 but say so loudly in the log
            self.hub.errors.append(_redact(f"{method} {raw_path}: {type(e).__name__}: {e}"))
            self.hub._log(f"ERROR {self.hub.errors[-1]}")
            if self._status == 0:
                with contextlib.suppress(Exception):
                    self._send_json({"error": f"Internal test-server error: {type(e).__name__}: {e}"}, 500)
            self.close_connection = True
        finally:
            self.hub._record(method, raw_path, self._status, self._user, time.monotonic() - t0)


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HubTestServer:
    """A Hub-compatible server on 127.0.0.1. ``start()``/``stop()`` or use it as a context manager."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: dict[str, str] | None = None,
        default_user: str = USER,
        orgs: dict[str, list[str]] | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunk_size: int = 16 * 1024 * 1024,
        log: bool = False,
    ) -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="hub_test_server_"))
        self.storage = Storage(self.root)
        self.host, self.port = host, port
        self.tokens = dict(tokens) if tokens is not None else None
        self.default_user = default_user
        self.orgs = {k: list(v) for k, v in (orgs or {}).items()}
        self.multipart_threshold, self.multipart_chunk_size = multipart_threshold, multipart_chunk_size
        self.faults = Faults()
        self.requests: list[dict] = []  # access log: method, path (tokens redacted), status, user, seconds
        self.errors: list[str] = []  # internal server errors (bugs in this server, not injected faults)
        self.log = log
        self._tickets: dict[str, dict] = {}
        self._tickets_lock = threading.Lock()
        self._httpd: _ThreadingServer | None = None
        self._connections: set[socket.socket] = set()  # open (kept-alive) client connections, closed by stop()
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubTestServer is not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> HubTestServer:
        if self._httpd is not None:
            return self
        handler = type("HubHandler", (_Handler,), {"hub": self})
        self._httpd = _ThreadingServer((self.host, self.port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="hub-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self.faults.release_holds()  # parked requests end before the server does
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None
        for conn in list(self._connections):  # a stopped server is down: kept-alive connections get no answer
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubTestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # helpers for tests (no HTTP) -----------------------------------------------------------------
    def repo_url(self, repo_id: str, repo_type: str = "model") -> str:
        return f"{self.url}/{_PREFIX[repo_type]}{repo_id}"

    def head(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str | None:
        """The commit id ``revision`` points at (None if the repo or revision does not exist)."""
        return self.storage.resolve(repo_type, repo_id, revision)

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Every file of ``revision`` with its content (small repos only)."""
        oid = self.head(repo_id, repo_type, revision)
        if oid is None:
            raise KeyError(f"{repo_type} {repo_id}@{revision} not found")
        files = self.storage.commit(repo_type, repo_id, oid)["files"]
        return {p: self.storage.blob_path(e["sha256"]).read_bytes() for p, e in sorted(files.items())}

    def create_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        private: bool = False,
        gated: bool = False,
        owner: str | None = None,
    ) -> str:
        """Create a repo directly (no HTTP); returns its url."""
        self._create(repo_type, repo_id, private, owner or repo_id.split("/")[0])
        if gated:
            self.set_repo_settings(repo_id, repo_type, gated=True)
        return self.repo_url(repo_id, repo_type)

    def set_repo_settings(
        self,
        repo_id: str,
        repo_type: str = "model",
        *,
        private: bool | None = None,
        gated: bool | str | None = None,
        grant: list[str] | None = None,
    ) -> None:
        with self.storage.lock(repo_type, repo_id):
            meta = self.storage.meta(repo_type, repo_id)
            if meta is None:
                raise KeyError(f"{repo_type} {repo_id} not found")
            if private is not None:
                meta["private"] = bool(private)
            if gated is not None:
                meta["gated"] = gated if isinstance(gated, str) else ("auto" if gated else False)
            if grant:
                meta["granted"] = sorted(set(meta.get("granted", [])) | set(grant))
            self.storage.set_meta(repo_type, repo_id, meta)

    def subprocess_env(
        self, home: str | os.PathLike, token: str | None = USER_TOKEN, base: dict | None = None
    ) -> dict[str, str]:
        """Environment for a child process whose real clients talk to this server with a fresh cache."""
        env = dict(os.environ if base is None else base)
        for key in (
            "HF_HUB_CACHE",
            "HF_DATASETS_CACHE",
            "HF_XET_CACHE",
            "HF_ASSETS_CACHE",
            "HF_TOKEN_PATH",
            "HUGGINGFACE_HUB_CACHE",
            "TRANSFORMERS_CACHE",
            "HUGGINGFACE_CO_STAGING",
            "TRANSFORMERS_OFFLINE",
        ):
            env.pop(key, None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(home),
            HF_HUB_OFFLINE="0",
            HF_DATASETS_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_UPDATE_DOWNLOAD_COUNTS="0",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        if token:
            env["HF_TOKEN"] = token
        else:
            env.pop("HF_TOKEN", None)
        return env

    @contextlib.contextmanager
    def client_environment(
        self, home: str | os.PathLike | None = None, token: str | None = USER_TOKEN
    ) -> Iterator[HubTestServer]:
        """Point the *already imported* clients of this process at the server, then restore them.

        huggingface_hub and datasets read ``HF_ENDPOINT``/offline flags/cache paths into module
        constants at import time, so setting environment variables is not enough in-process. This
        patches ``huggingface_hub.constants`` (ENDPOINT, the resolve URL template, HF_URL_HOSTS,
        offline, Xet, cache dirs), the module-level ``HfApi`` behind ``huggingface_hub.create_repo`` &
        co., fsspec's cached ``HfFileSystem`` instances and ``datasets.config`` (endpoint, offline,
        caches, ``USE_PARQUET_EXPORT=False``), and sets the same environment for child processes.
        transformers and timm go through huggingface_hub and need nothing more.
        """
        import importlib.util

        import huggingface_hub
        from huggingface_hub import constants as hc
        from huggingface_hub import hf_api

        home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="hub_client_home_"))
        saved_env = dict(os.environ)
        patches: list[tuple[Any, str, Any]] = []

        def patch(obj: Any, name: str, value: Any) -> None:
            patches.append((obj, name, getattr(obj, name, None)))
            setattr(obj, name, value)

        try:
            wanted = self.subprocess_env(home, token, base=saved_env)
            for key in set(saved_env) - set(wanted):
                del os.environ[key]
            os.environ.update({k: v for k, v in wanted.items() if saved_env.get(k) != v})
            patch(hc, "ENDPOINT", self.url)
            patch(hc, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}")
            patch(hc, "HF_URL_HOSTS", frozenset(hc.HF_URL_HOSTS | {self.host}))
            patch(hc, "HF_HUB_OFFLINE", False)
            patch(hc, "HF_HUB_DISABLE_XET", True)
            patch(hc, "HF_HOME", str(home))
            patch(hc, "HF_HUB_CACHE", str(home / "hub"))
            patch(hc, "HF_XET_CACHE", str(home / "xet"))
            patch(hc, "HF_ASSETS_CACHE", str(home / "assets"))
            patch(hf_api.api, "endpoint", self.url)
            # transformers keeps its own module-level HfApi (transformers.utils.hub.hf_api()), created
            # on first use with the endpoint of that moment: point it here too, or a push made after
            # an earlier server stopped goes to a dead port
            try:
                import transformers.utils.hub as tf_hub
            except ImportError:
                tf_hub = None
            if tf_hub is not None and hasattr(tf_hub, "_hf_api"):
                patch(tf_hub, "_hf_api", None)
            huggingface_hub.HfFileSystem.clear_instance_cache()
            if "datasets" in sys.modules or importlib.util.find_spec("datasets") is not None:
                import datasets.config as dc

                patch(dc, "HF_ENDPOINT", self.url)
                patch(dc, "HUB_DATASETS_URL", self.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
                patch(dc, "HF_HUB_OFFLINE", False)
                patch(dc, "HF_DATASETS_OFFLINE", False)
                patch(dc, "USE_PARQUET_EXPORT", False)
                cache = home / "datasets"
                for name, value in (
                    ("HF_CACHE_HOME", home),
                    ("HF_DATASETS_CACHE", cache),
                    ("DOWNLOADED_DATASETS_PATH", cache / "downloads"),
                    ("EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted"),
                    ("HF_MODULES_CACHE", home / "modules"),
                ):
                    if hasattr(dc, name):
                        patch(dc, name, value if isinstance(getattr(dc, name), Path) else str(value))
            yield self
        finally:
            for obj, name, old in reversed(patches):
                setattr(obj, name, old)
            for key in set(os.environ) - set(saved_env):
                del os.environ[key]
            os.environ.update({k: v for k, v in saved_env.items() if os.environ.get(k) != v})
            huggingface_hub.HfFileSystem.clear_instance_cache()

    # logging -------------------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        if self.log:
            print(_redact(line), file=sys.stderr, flush=True)

    def _record(self, method: str, raw_path: str, status: int, user: str | None, seconds: float) -> None:
        entry = {
            "method": method,
            "path": _redact(urllib.parse.unquote(raw_path)),
            "status": status,
            "user": user,
            "seconds": round(seconds, 4),
        }
        self.requests.append(entry)
        self._log(f"{method} {entry['path']} -> {status if status >= 0 else 'dropped'} ({user or 'anonymous'})")

    # auth ----------------------------------------------------------------------------------------
    def _auth(self, h: _Handler) -> str | None:
        if self.tokens is None:
            return self.default_user
        header = h.headers.get("Authorization", "")
        if not header:
            return None
        token = header.split(" ", 1)[1].strip() if " " in header else header.strip()
        user = self.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, []))

    def _repo_meta(self, h: _Handler, rtype: str, repo_id: str, write: bool = False) -> dict:
        meta = self.storage.meta(rtype, repo_id)
        user = h._user
        visible = meta is not None and (not meta.get("private") or self._can_write(user, meta["owner"]))
        if not visible:
            if user is None:
                raise HubError(401, "Repository not found", "RepoNotFound")
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and not self._can_write(user, meta["owner"]):
            if user is None:
                raise HubError(401, "You must be authenticated to write to this repo", "RepoNotFound")
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return meta

    def _check_gated(self, h: _Handler, meta: dict, path: str) -> None:
        if not meta.get("gated") or path in ("README.md", ".gitattributes"):
            return
        user = h._user
        if self._can_write(user, meta["owner"]) or user in meta.get("granted", []):
            return
        raise HubError(401 if user is None else 403, "Access to this gated repo is restricted", "GatedRepo")

    # routing -------------------------------------------------------------------------------------
    def _route(self, h: _Handler, method: str, raw_path: str, q: dict) -> None:
        segs = [urllib.parse.unquote(s) for s in raw_path.split("/")[1:]]
        if segs and segs[0] == "_test":
            return self._control(h, method, segs[1:])
        if segs[:1] == ["_lfs"]:
            return self._lfs_transfer(h, method, segs[1:])
        h._user = self._auth(h)
        if segs[:1] == ["api"]:
            return self._api(h, method, segs[1:], q)
        # /{P}{repo}.git/info/lfs/objects/batch  and  /{P}{repo}/resolve/{rev}/{path}
        rtype = "dataset" if segs[:1] == ["datasets"] else "model"
        rest = segs[1:] if rtype == "dataset" else segs
        if len(rest) >= 5 and rest[-4:] == ["info", "lfs", "objects", "batch"] and method == "POST":
            repo_id = "/".join(rest[:-4])
            if not repo_id.endswith(".git"):
                raise HubError(404, "Not found")
            return self._lfs_batch(h, rtype, self._repo_id(repo_id[:-4]))
        if "resolve" in rest and method in ("GET", "HEAD"):
            i = rest.index("resolve")
            repo_id = self._repo_id("/".join(rest[:i]))
            rev, path = self._split_rev(rest[i + 1 :])
            return self._resolve(h, rtype, repo_id, rev, path)
        raise HubError(404, f"Not found: {method} {urllib.parse.unquote(raw_path)}")

    @staticmethod
    def _repo_id(repo_id: str) -> str:
        parts = repo_id.split("/")
        if not 1 <= len(parts) <= 2 or not all(_NAME.match(p) and ".." not in p for p in parts):
            raise HubError(400, f"Invalid repo id: {repo_id!r}")
        return repo_id

    @staticmethod
    def _split_rev(segs: list[str]) -> tuple[str, str]:
        """Rev (possibly ``refs/pr/N`` sent unencoded) and the rest of the path."""
        if not segs:
            raise HubError(400, "Missing revision")
        if segs[0] == "refs" and len(segs) >= 3 and segs[1] in ("pr", "heads", "tags", "convert"):
            return "/".join(segs[:3]), "/".join(segs[3:])
        return segs[0], "/".join(s for s in segs[1:] if s)

    def _fault(self, h: _Handler, point: str) -> None:
        self.faults.wait_if_held(point, urllib.parse.unquote(h.path))
        rule = self.faults.check(point, urllib.parse.unquote(h.path))
        if rule is None:
            return
        if rule["delay"]:
            time.sleep(rule["delay"])
        if rule["drop"]:
            h._body()  # read the request fully, then hang up without an answer
            raise _Drop()
        headers = {} if rule["retry_after"] is None else {"Retry-After": str(rule["retry_after"])}
        raise HubError(rule["status"], rule["message"], rule["code"], headers)

    def _control(self, h: _Handler, method: str, segs: list[str]) -> None:
        if segs == ["faults"]:
            if method == "POST":
                spec = h._json_body()
                try:
                    rule = self.faults.add(spec.pop("point"), **spec)
                except (KeyError, TypeError, ValueError) as e:
                    raise HubError(400, f"Bad fault spec: {e}") from e
                return h._send_json(rule)
            if method == "DELETE":
                self.faults.clear()
                return h._send_json({})
            return h._send_json(self.faults.snapshot())
        if segs == ["requests"] and method == "GET":
            return h._send_json(self.requests)
        raise HubError(404, "Unknown control endpoint")

    def _api(self, h: _Handler, method: str, segs: list[str], q: dict) -> None:
        if segs == ["whoami-v2"] and method == "GET":
            if h._user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            orgs = [{"name": o, "type": "org"} for o, members in self.orgs.items() if h._user in members]
            return h._send_json(
                {
                    "type": "user",
                    "name": h._user,
                    "fullname": h._user,
                    "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                }
            )
        if segs == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(h)
        if segs[:1] == ["repos"] and method in ("POST", "DELETE"):
            return self._repos(h, method, segs[1:])
        if len(segs) >= 2 and segs[0] in ("models", "datasets"):
            # The repo id is 1 or 2 segments ("gpt2" or "ns/name"): a known verb in 3rd place ends it.
            verbs = (
                "revision",
                "tree",
                "paths-info",
                "refs",
                "commits",
                "branch",
                "tag",
                "preupload",
                "commit",
                "settings",
                "xet-write-token",
                "xet-read-token",
                "parquet",
                "discussions",
            )
            n = 2 if len(segs) >= 3 and segs[2] not in verbs else 1
            repo_id = self._repo_id("/".join(segs[1 : 1 + n]))
            return self._repo_api(h, method, segs[0][:-1], repo_id, segs[1 + n :], q)
        raise HubError(404, f"Not found: /api/{'/'.join(segs)}")

    def _repo_api(self, h: _Handler, method: str, rtype: str, repo_id: str, rest: list[str], q: dict) -> None:
        verb = rest[0] if rest else ""
        if verb in ("", "revision") and method == "GET":
            self._fault(h, "repo_info")
            meta = self._repo_meta(h, rtype, repo_id)
            rev = self._split_rev(rest[1:])[0] if verb == "revision" else "main"
            return self._repo_info(h, rtype, repo_id, meta, rev)
        if verb == "settings" and method == "PUT":
            return self._settings(h, rtype, repo_id)
        if verb in ("xet-write-token", "xet-read-token"):
            raise HubError(404, "Xet is not served by the test server: set HF_HUB_DISABLE_XET=1 in the client")
        write = verb in ("branch", "tag", "preupload", "commit") and method in ("POST", "DELETE")
        meta = self._repo_meta(h, rtype, repo_id, write=write)
        if verb == "tree" and method == "GET":
            self._fault(h, "tree")
            rev, path = self._split_rev(rest[1:])
            return self._tree(h, rtype, repo_id, rev, path.strip("/"), q)
        if verb == "paths-info" and method == "POST":
            rev, _ = self._split_rev(rest[1:])
            ctype = h.headers.get("Content-Type", "")
            if "json" in ctype:
                paths = h._json_body().get("paths", [])
            else:
                paths = urllib.parse.parse_qs(h._body().decode(), keep_blank_values=True).get("paths", [])
            files = self._files(rtype, repo_id, rev)[1]
            entries = [e for p in paths if (e := self._entry(files, p.strip("/"))) is not None]
            return h._send_json(entries)
        if verb == "refs" and method == "GET":
            refs = self.storage.refs(rtype, repo_id)

            def fmt(kind, items):
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(items.items())]

            out = {"branches": fmt("heads", refs["branches"]), "tags": fmt("tags", refs["tags"]), "converts": []}
            if q.get("include_prs"):
                out["pullRequests"] = fmt("pr", refs["prs"])
            return h._send_json(out)
        if verb == "commits" and method == "GET":
            oid = self._files(rtype, repo_id, self._split_rev(rest[1:])[0])[0]
            log = []
            while oid:
                c = self.storage.commit(rtype, repo_id, oid)
                log.append(
                    {
                        "id": c["id"],
                        "title": c["title"],
                        "message": c["message"],
                        "date": c["date"],
                        "authors": [{"user": a, "avatar": ""} for a in c["authors"]],
                        "formatted": {"title": c["title"], "message": c["message"]},
                    }
                )
                oid = c["parents"][0] if c["parents"] else None
            return h._send_json(log)
        if verb == "branch" and len(rest) >= 2:
            return self._branch(h, method, rtype, repo_id, "/".join(rest[1:]))
        if verb == "tag" and len(rest) >= 2:
            return self._tag(h, method, rtype, repo_id, "/".join(rest[1:]))
        if verb == "preupload" and method == "POST":
            self._fault(h, "preupload")
            return self._preupload(h, rtype, repo_id, self._split_rev(rest[1:])[0], q)
        if verb == "commit" and method == "POST":
            return self._commit(h, rtype, repo_id, meta, self._split_rev(rest[1:])[0], q)
        raise HubError(404, f"Not found: {method} /api/{rtype}s/{repo_id}/{'/'.join(rest)}")

    # repos ---------------------------------------------------------------------------------------
    def _create(self, rtype: str, repo_id: str, private: bool, owner: str) -> bool:
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
        ns = body.get("organization") or h._user
        if h._user is None:  # as the Hub: anonymous writes are 401 whatever the namespace
            raise HubError(401, "You must be authenticated to create or delete a repo")
        repo_id = self._repo_id(f"{ns}/{name}")
        if not self._can_write(h._user, ns):
            raise HubError(403, f"You don't have the rights to create a {rtype} under the namespace {ns!r}")
        url = f"http://{h.headers.get('Host', f'{self.host}:{self.port}')}/{_PREFIX[rtype]}{repo_id}"
        if segs == ["create"] and method == "POST":
            if body.get("sdk") or rtype not in _PREFIX:
                raise HubError(400, "Spaces are not served by the test server")
            private = body.get("private", body.get("visibility") == "private")
            if not self._create(rtype, repo_id, bool(private), ns):
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
        return oid, self.storage.commit(rtype, repo_id, oid)["files"]

    def _repo_info(self, h: _Handler, rtype: str, repo_id: str, meta: dict, rev: str) -> None:
        oid, files = self._files(rtype, repo_id, rev)
        commit = self.storage.commit(rtype, repo_id, oid)
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
        entries = [self._entry(files, n) for n in names]
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
        files = self.storage.commit(rtype, repo_id, oid)["files"] if oid else {}
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
            files = dict(self.storage.commit(rtype, repo_id, head)["files"])
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

    # downloads -----------------------------------------------------------------------------------
    def _resolve(self, h: _Handler, rtype: str, repo_id: str, rev: str, path: str) -> None:
        self._fault(h, "resolve")
        meta = self._repo_meta(h, rtype, repo_id)
        oid = self.storage.resolve(rtype, repo_id, rev)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = self.storage.commit(rtype, repo_id, oid)["files"]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hf_transfer.testing.hub_server",
        description="Serve a Hub-compatible test server on 127.0.0.1 until interrupted.",
    )
    p.add_argument("--root", required=True, help="folder holding the repos (created if missing)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN=USER",
        help="accept TOKEN as USER (repeatable); without any, every request acts as --user",
    )
    p.add_argument("--user", default=USER, help="the user when no --token is given")
    p.add_argument("--log", action="store_true", help="print an access log (tokens redacted) to stderr")
    args = p.parse_args(argv)
    tokens = dict(t.split("=", 1) for t in args.token) if args.token else None
    server = HubTestServer(
        args.root, host=args.host, port=args.port, tokens=tokens, default_user=args.user, log=args.log
    ).start()
    print(server.url, flush=True)
    print(f"export HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1 HF_HUB_OFFLINE=0", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
