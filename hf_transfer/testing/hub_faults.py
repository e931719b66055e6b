"""Fault injection and holds of the Hub test server (see :mod:`hf_transfer.testing.hub_server`)."""

from __future__ import annotations

import re
import threading

from hf_transfer.testing.hub_common import FAULT_POINTS


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
        """Park the next ``times`` requests at ``point`` until the returned hold is released.

        ``path`` (a regex on the request path) restricts the hold; the parked requests are then served normally.
        ``timeout``: the hold releases itself after it.
        """
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
        """Let every parked request go on and forget the holds (a stopping server must not keep any)."""
        with self._lock:
            for hold in self._holds:
                hold.release()
            self._holds.clear()

    def clear(self) -> None:
        """Release the holds and drop every rule and count: the server behaves normally again."""
        self.release_holds()
        with self._lock:
            self._rules.clear()
            self.seen.clear()
            self.fired.clear()

    def rules(self) -> list[dict]:
        """Copies of the rules added so far, with how often each fired."""
        with self._lock:
            return [dict(r) for r in self._rules]

    def snapshot(self) -> dict:
        """The rules and the per-point counts (what ``GET /_test/faults`` answers)."""
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
