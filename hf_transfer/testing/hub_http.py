"""The Hub test server's HTTP layer: one request handler per server, a threading HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import time
import urllib.parse
from typing import Any, Protocol

from hf_transfer.testing.hub_common import HubError, _Drop, _redact


class _Hub(Protocol):
    """What the handler uses of its :class:`~hf_transfer.testing.hub_server.HubTestServer` (which imports this)."""

    _connections: set[socket.socket]
    errors: list[str]

    def _route(self, h: _Handler, method: str, raw_path: str, q: dict) -> None: ...

    def _log(self, line: str) -> None: ...

    def _record(self, method: str, raw_path: str, status: int, user: str | None, seconds: float) -> None: ...


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HubTestServer/1.0"
    hub: _Hub  # the HubTestServer, set on the subclass made per server
    _cached_body: bytes  # the current request's body once read (dropped at the start of each request)
    _status: int  # the status answered to the current request (0: none yet, -1: dropped)
    _user: str | None  # who the current request acts as (None: anonymous)

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

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"
    ) -> None:
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
        self._user = None
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
