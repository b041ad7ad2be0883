"""Which executors are in the ring and alive, as seen from one query node, and where their Flight servers listen.

**The ring** is an immutable `HashRing`; the membership replaces it whole (one attribute assignment) when
its source (appliance/routing/sources.py: a static list, a members file, an autoscaling group) names
other executors, looked at every `membership_poll_seconds`. A search reads the ring once when it starts
and keeps that ring to its end, retries included (query/dispatch.py), so a swap never changes a search
half-way. Only a change of members moves keys, and only about 1/N of them (ring.py).

- **Join**: a newcomer is probed like a member but gets no work until its `/readyz` answers ready; then
  the query node prewarms it (appliance/routing/prewarm.py: it loads the groups the new ring gives it,
  for at most `membership_prewarm_seconds`, after which it joins anyway, logged), and only then swaps in
  the ring that holds it.
- **Leave**: an executor the source no longer names leaves the ring at once: new searches go elsewhere,
  and searches already running on it finish there. Whoever stops it (`appliance up`, the autoscaling
  group's lifecycle hook) then drains it (`POST /admin/drain`, appliance/drain.py) and stops it once idle;
  a batch that still reaches it meanwhile is answered 503 `draining` and re-sent by the dispatcher.
- **Health** only *excludes* members: when an executor dies its keys fall to the next member on the ring
  (and only its keys move), and when it comes back its keys return to it, where its cache still is.

An executor's `/readyz` says which port its Flight server (the search hop, appliance/executor/runner.py)
listens on, on the host of its URL; one that says none (an older version met during a rolling upgrade, or
Flight turned off) is sent its task batches over HTTP.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from appliance.routing.connections import ConnectionPool
from appliance.routing.prewarm import PrewarmReport
from appliance.routing.ring import HashRing
from appliance.routing.sources import MembershipSource, SourceUnavailable, StaticSource

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
    wire: int = 1  # the task batch form it reads, as its last answered probe said (planner/plan.py WIRE_LEVEL)
    joining: bool = False  # named by the source, not yet in the ring (waiting to be ready, or prewarming)
    prewarm: PrewarmReport | None = field(default=None)  # how its prewarm went, once it joined


Prewarm = Callable[[str, HashRing, float], PrewarmReport]
"""(newcomer URL, the ring it would join, seconds allowed) -> how far it got; Dispatcher.prewarm."""


class Membership:
    """The ring of executors from a membership source, and their health from periodic `/readyz` probes plus
    failures seen by the dispatcher."""

    def __init__(self, source: MembershipSource | list[str], interval: float = 1.0, probe_timeout: float = 1.0,
                 poll: float = 10.0, prewarm_seconds: float = 30.0) -> None:
        self.source = StaticSource(source) if isinstance(source, list) else source
        try:
            urls = self.source.members()
        except SourceUnavailable as exc:
            log.warning("executor membership: %s; starting with no executors", exc)
            urls = []
        if not urls and not self.source.dynamic:
            raise ValueError("no executors configured (APPLIANCE_EXECUTOR_URLS is empty)")
        self.ring = HashRing(urls)  # replaced whole, never changed: searches keep the one they started with
        self._states = {u: MemberState(u) for u in urls}
        self._wanted = set(urls)
        self._interval = interval
        self._poll = poll
        self._prewarm_seconds = prewarm_seconds
        self.prewarm: Prewarm | None = None  # set by the query node: Dispatcher.prewarm
        self._probe_timeout = probe_timeout
        self._lock = threading.Lock()  # member states
        self._ring_lock = threading.Lock()  # ring swaps and the wanted set
        self._joining: set[str] = set()
        self._connections = ConnectionPool(probe_timeout, max_idle=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source_error = ""

    def start(self) -> None:
        """Probe once synchronously (so the first request sees real health), then in the background."""
        self.probe_all()
        self._thread = threading.Thread(target=self._loop, name="executor-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        next_look = time.monotonic() + self._poll
        while not self._stop.wait(self._interval):
            if self.source.dynamic and (self.source.cheap or time.monotonic() >= next_look):
                next_look = time.monotonic() + self._poll
                self.refresh()
            self.probe_all()

    def refresh(self) -> None:
        """Ask the source who the members are: leavers leave the ring now, newcomers start joining."""
        try:
            wanted = set(self.source.members())
        except SourceUnavailable as exc:
            if str(exc) != self._source_error:
                log.warning("executor membership unchanged: %s", exc)
            self._source_error = str(exc)
            return
        self._source_error = ""
        with self._ring_lock:
            self._wanted = wanted
            leaving = [u for u in self.ring.nodes if u not in wanted]
            if leaving:
                self.ring = HashRing(u for u in self.ring.nodes if u in wanted)
                for url in leaving:
                    log.info("executor %s leaves the ring (%s no longer names it); %d members", url,
                             self.source.describe(), len(self.ring.nodes))
            with self._lock:
                for url in [u for u in self._states if u not in wanted]:
                    del self._states[url]  # a leaver, or a newcomer withdrawn before it joined
                newcomers = [u for u in sorted(wanted) if u not in self._states]
                for url in newcomers:
                    self._states[url] = MemberState(url, joining=True)
            for url in newcomers:
                log.info("executor %s is named by %s; it joins the ring once ready and prewarmed", url,
                         self.source.describe())
                if url not in self._joining:  # else its thread, still running, carries on with the new state
                    self._joining.add(url)
                    threading.Thread(target=self._join, args=(url,), name="executor-join", daemon=True).start()

    def _join(self, url: str) -> None:
        """Wait until `url` is ready, prewarm it, then swap in the ring that holds it (unless it was withdrawn)."""
        try:
            while not self._stop.is_set():
                state = self._states.get(url)
                if state is None or url not in self._wanted:
                    return  # withdrawn before it joined
                if not (state.healthy and not state.draining):
                    self._stop.wait(self._interval)
                    continue
                report = PrewarmReport()
                if self.prewarm is not None:
                    try:
                        report = self.prewarm(url, HashRing([*self.ring.nodes, url]), self._prewarm_seconds)
                    except Exception as exc:  # noqa: BLE001 - a failed prewarm must not keep it out for good
                        log.exception("prewarming executor %s failed", url)
                        report = PrewarmReport(error=f"{type(exc).__name__}: {exc}")
                with self._ring_lock:
                    state = self._states.get(url)
                    if state is None or url not in self._wanted:
                        return
                    if not state.healthy:
                        continue  # died while prewarming: wait for it again
                    self.ring = HashRing([*self.ring.nodes, url])
                    with self._lock:
                        state.joining, state.prewarm = False, report
                if report.complete:
                    log.info("executor %s joins the ring, prewarmed: %d groups in %.2f s; %d members", url,
                             report.groups, report.seconds, len(self.ring.nodes))
                else:
                    log.warning("executor %s joins the ring before its prewarm finished: %d of %d groups loaded in "
                                "%.2f s (%s); %d members", url, report.warmed, report.groups, report.seconds,
                                report.error or "membership_prewarm_seconds passed", len(self.ring.nodes))
                return
        finally:
            with self._ring_lock:
                self._joining.discard(url)

    def probe_all(self) -> None:
        """Probe every executor the source names: the ring's members and those waiting to join."""
        for url in list(self._states):
            ok, draining, error, doc = self._probe(url)
            self._record(url, ok, error, draining)
            if ok and not draining:
                self._learn(url, doc)

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

    def _learn(self, url: str, doc: dict) -> None:
        """Where the executor's Flight server listens, and which task batch form it reads, from its /readyz."""
        port, wire = doc.get("flight_port"), doc.get("wire")
        location = None
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            host = urlsplit(url).hostname or ""
            location = f"grpc+tcp://{f'[{host}]' if ':' in host else host}:{port}"
        with self._lock:
            state = self._states.get(url)
            if state is None:
                return  # left meanwhile
            if location != state.flight:
                log.info("executor %s: task batches go %s", url, f"over Flight to {location}" if location
                         else "over HTTP")
            state.flight = location
            state.wire = wire if isinstance(wire, int) and not isinstance(wire, bool) and wire > 0 else 1

    def wire(self, url: str) -> int:
        """The task batch form `url` reads (planner/plan.py WIRE_LEVEL); 1 when it never said."""
        state = self._states.get(url)
        return state.wire if state is not None else 1

    def flight_location(self, url: str) -> str | None:
        """Where to send `url`'s task batches over Flight; None: over HTTP (or not a member any more)."""
        state = self._states.get(url)
        return state.flight if state is not None else None

    def _record(self, url: str, ok: bool, error: str, draining: bool = False) -> None:
        with self._lock:
            state = self._states.get(url)
            if state is None:
                return  # left the ring meanwhile: nothing to record
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
        """Members no new batch goes to: unhealthy or draining. An executor that left the ring is not among
        them: a search that began before it left (and holds a ring with it) lets its batch there finish, and
        one that sends it a batch after its drain gets 503 `draining` and sends it elsewhere."""
        with self._lock:
            return {u for u, s in self._states.items() if not s.healthy or s.draining}

    def unhealthy(self) -> set[str]:
        """Members whose batches in flight are given up and re-sent (hedged): not answering probes. A
        draining member is not among them: it finishes the batches it runs before it stops."""
        with self._lock:
            return {u for u, s in self._states.items() if not s.healthy}

    def live(self) -> list[str]:
        excluded = self.down()
        return [u for u in self.ring.nodes if u not in excluded]

    def snapshot(self) -> list[dict[str, object]]:
        """Every executor the source names, members of the ring and newcomers (`joining`)."""
        with self._lock:
            return [
                {"url": s.url, "healthy": s.healthy, "draining": s.draining, "joining": s.joining,
                 "last_seen": s.last_seen, "last_error": s.last_error, "flight": s.flight,
                 "prewarm": s.prewarm.to_json() if s.prewarm is not None else None}
                for s in self._states.values()
            ]

    def describe(self) -> dict[str, object]:
        """The ring and where it comes from, for `GET /admin/ring`."""
        return {"source": self.source.describe(), "ring": list(self.ring.nodes), "members": self.snapshot(),
                "live": self.live()}


def _json_object(body: bytes) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
