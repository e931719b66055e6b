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
Models, datasets and Spaces (their repos: created with an ``sdk``, which repo info reports; nothing is run):
``whoami-v2``, repo create/delete/settings, repo info (``siblings`` with LFS
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
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from hf_transfer.testing.hub_client import ClientHelpers
from hf_transfer.testing.hub_common import _NAME, _TYPE_OF_PREFIX, USER, HubError, _Drop, _redact
from hf_transfer.testing.hub_faults import Faults
from hf_transfer.testing.hub_http import _Handler, _ThreadingServer
from hf_transfer.testing.hub_repos import RepoRoutes
from hf_transfer.testing.hub_storage import Storage
from hf_transfer.testing.hub_uploads import UploadRoutes


class HubTestServer(ClientHelpers, RepoRoutes, UploadRoutes):
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
        """The endpoint (``HF_ENDPOINT``) of the started server, with the port it got."""
        if self._httpd is None:
            raise RuntimeError("HubTestServer is not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> HubTestServer:
        """Serve on a background thread (a started server is returned as it is)."""
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
        """Stop serving, hang up kept-alive connections and delete a root the server made itself."""
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
        if meta is None or (meta.get("private") and not self._can_write(user, meta["owner"])):
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
        rtype = _TYPE_OF_PREFIX.get(segs[0], "model") if segs else "model"
        rest = segs[1:] if rtype != "model" else segs
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
        if len(segs) >= 2 and segs[0] in ("models", "datasets", "spaces"):
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

            def fmt(kind: str, items: dict[str, str]) -> list[dict]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(items.items())]

            out = {"branches": fmt("heads", refs["branches"]), "tags": fmt("tags", refs["tags"]), "converts": []}
            if q.get("include_prs"):
                out["pullRequests"] = fmt("pr", refs["prs"])
            return h._send_json(out)
        if verb == "commits" and method == "GET":
            oid: str | None = self._files(rtype, repo_id, self._split_rev(rest[1:])[0])[0]
            log = []
            while oid:
                c = self.storage.known_commit(rtype, repo_id, oid)
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


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted (the command line of ``python -m hf_transfer.testing.hub_server``)."""
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
