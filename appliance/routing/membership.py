"""Which executors are alive, as seen from one query node, and where their Arrow Flight servers listen.

The ring is built over every configured executor and never changes while the process runs; liveness
only *excludes* members. So when an executor dies its keys fall to the next member on the ring (and only
its keys move), and when it comes back its keys return to it, where its cache still is.

An executor's `/readyz` says which port its Flight server (the search hop, appliance/executor/flight.py)
listens on, on the host of its URL; one that says none (an older version met during a rolling upgrade, or
Flight turned off) is sent its task batches over HTTP.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from appliance.routing.connections import ConnectionPool
from appliance.routing.ring import HashRing

log = logging.getLogger("appliance.routing")


@dataclass
class MemberState:
    url: str
    healthy: bool = False
    draining: bool = False
    last_seen: float = 0.0
    last_error: str = ""
    failures: int = 0
    flight: str | None = None  # grpc+tcp://host:port of its Flight server, as its last answered probe said


class Membership:
    """Executor health from periodic `/readyz` probes plus failures seen by the dispatcher."""

    def __init__(self, urls: list[str], interval: float = 1.0, probe_timeout: float = 1.0) -> None:
        if not urls:
            raise ValueError("no executors configured (APPLIANCE_EXECUTOR_URLS is empty)")
        self.ring = HashRing(urls)
        self._states = {u: MemberState(u) for u in urls}
        self._interval = interval
        self._probe_timeout = probe_timeout
        self._lock = threading.Lock()
        self._connections = ConnectionPool(probe_timeout, max_idle=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Probe once synchronously (so the first request sees real health), then in the background."""
        self.probe_all()
        self._thread = threading.Thread(target=self._loop, name="executor-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.probe_all()

    def probe_all(self) -> None:
        for url in list(self._states):
            ok, draining, error, doc = self._probe(url)
            self._record(url, ok, error, draining)
            if ok and not draining:
                self._learn_flight(url, doc.get("flight_port"))

    def _probe(self, url: str) -> tuple[bool, bool, str, dict]:
        """(alive, draining, error, answer) from the executor's `/readyz`: 503 with `"draining": true` is a
        live executor being taken out (POST /admin/drain), excluded from routing but not counted as failing.
        An executor without `/readyz` (an older version, mid-upgrade) is probed on `/healthz`."""
        try:
            status, body = self._connections.request("GET", url, "/readyz")
            if status == 404:
                status, body = self._connections.request("GET", url, "/healthz")
        except (OSError, http.client.HTTPException) as exc:
            return False, False, type(exc).__name__, {}
        doc = _json_object(body)
        if status == 200:
            return True, False, "", doc
        if status == 503 and doc.get("draining"):
            return True, True, "", doc
        return False, False, f"answered {status}", doc

    def _learn_flight(self, url: str, port: object) -> None:
        location = None
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            host = urlsplit(url).hostname or ""
            location = f"grpc+tcp://{f'[{host}]' if ':' in host else host}:{port}"
        with self._lock:
            state = self._states[url]
            if location != state.flight:
                log.info("executor %s: task batches go %s", url, f"over Flight to {location}" if location
                         else "over HTTP")
            state.flight = location

    def flight_location(self, url: str) -> str | None:
        """Where to send `url`'s task batches over Flight; None: over HTTP."""
        return self._states[url].flight

    def _record(self, url: str, ok: bool, error: str, draining: bool = False) -> None:
        with self._lock:
            state = self._states[url]
            if draining != state.draining:
                log.info("executor %s %s", url, "is draining" if draining else "is no longer draining")
            state.draining = draining
            if ok and not state.healthy:
                log.info("executor %s is up", url)
            if not ok and state.healthy:
                log.warning("executor %s is down: %s", url, error)
            state.healthy = ok
            if ok:
                state.last_seen = time.time()
                state.failures = 0
                state.last_error = ""
            else:
                state.failures += 1
                state.last_error = error

    def mark_down(self, url: str, reason: str) -> None:
        """A request to `url` failed: stop routing to it until a probe sees it healthy again."""
        self._record(url, False, reason)

    def down(self) -> set[str]:
        with self._lock:
            return {u for u, s in self._states.items() if not s.healthy or s.draining}

    def live(self) -> list[str]:
        excluded = self.down()
        return [u for u in self.ring.nodes if u not in excluded]

    def snapshot(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {"url": s.url, "healthy": s.healthy, "draining": s.draining,
                 "last_seen": s.last_seen, "last_error": s.last_error, "flight": s.flight}
                for s in self._states.values()
            ]


def _json_object(body: bytes) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
