"""Sends a plan's tasks to executors and merges what comes back.

Tasks are grouped per executor with bounded-load consistent hashing, and each executor gets one batch of
all its tasks, carrying the search's deadline: one message on an open Arrow Flight stream
(`FlightStreams`, the last section of this module), or, to an executor whose /readyz names no Flight port (an older
version), one request over a pooled keep-alive HTTP connection. Both transports end in the classes below.

Who is to blame decides what happens when a batch fails:

- the executor could not be reached, broke the connection or the stream, timed out, answered 503
  (draining, its storage unreachable) or refused our token: it is marked down and its tasks go to the next
  live member of the ring, so a query survives the death of any executor as long as one is left;
- it answered 4xx: the request is at fault (a bad filter, a bound exceeded, an absurd allocation). The
  error goes back to the client once, as the executor put it; no executor is marked down and nothing is
  re-sent, so one bad request cannot take the fleet out for everyone else;
- it answered 500: a bug, triggered by the request or by that executor's state. The batch is re-sent once
  to the next member, without marking anyone down; if that one succeeds, the first is marked down (it is
  the odd one out), and if it fails too the request is to blame and the client gets the error;
- it answered 504: the batch ran past the search's deadline on the executor: the search answers 504.

While waiting, the dispatcher watches the health probe (appliance/routing/membership.py): a batch waiting
on an executor the probe has since marked down (hung, SIGSTOPped, partitioned away) is abandoned and re-sent
to the next member at once (at most `max_hedges` times per search), so a hung executor costs a search about
one health interval, not the request timeout. When the deadline passes or the client hangs up, the
dispatcher abandons every batch still running: it cancels their streams (or closes their connections),
which the executors notice between tasks, so the plan's work stops everywhere.

A plan whose tasks all go to one executor (the usual case, routing groups in appliance/planner/plan.py)
sends its batch from the search's own thread, with no hand-off to the pool; one watchdog thread per
dispatcher then does the watching above for it (deadline, client, probe verdict), and a batch it abandons
is handled by the same rules as one that failed in the pool. Measured on 2 cores with 8 clients, the
hand-off and the per-search polling cost about 0.3-0.5 ms of query-node CPU per search.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.flight as flight

import kernels
from appliance.deadline import Cancelled, Deadline
from appliance.errors import ApplianceError, DeadlineExceeded, Unavailable
from appliance.planner.plan import (
    CONTENT_TYPE,
    INTERNAL_TOKEN_HEADER,
    PARTITION,
    PROBES_FIELD,
    QUERY_SCHEMA,
    REQUEST_ID_FIELD,
    TIMEOUT_FIELD,
    WIRE_LEVEL,
    Finish,
    SearchPlan,
    Task,
    WireError,
    decode,
    encode,
    legacy_tasks,
    payload_of,
    queries_batch,
    result_of,
    split_metadata,
)
from appliance.routing.connections import ConnectionPool, InFlight
from appliance.routing.membership import Membership
from appliance.routing.prewarm import PrewarmReport, RecentGroups
from appliance.routing.ring import HashRing, NoLiveNodes

POLL_SECONDS = 0.05  # how often a waiting search looks at the probe's verdicts, its deadline and its client
log = logging.getLogger("appliance.dispatch")


class ExecutorFailed(Exception):
    """The executor could not run its batch (connection refused, timeout, 503, wrong token): mark it down
    and run the batch elsewhere."""


class ExecutorError(Exception):
    """The executor answered 500: run the batch once more elsewhere before blaming anyone."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class ExecutorRejected(ApplianceError):
    """The executor refused the batch because of the request (4xx): its status and code, as it said."""

    def __init__(self, status: int, code: str, message: str, detail: str | None) -> None:
        super().__init__(message, detail)
        self.status = status
        self.code = code


class ExecutorsFailed(ApplianceError):
    """Two executors failed the same tasks with an internal error: the request triggers a bug."""

    status = 500
    code = "executor_error"


@dataclass(frozen=True)
class Found:
    """Finished results of a batch, or of a whole plan once merged: per query the best `keep` row ids and
    distances ([nq, keep], padded with kernels.NO_ID), the payload columns of the found ones row by row
    (None when none were asked for), and per query whether it came up short of `keep` while an executor's
    candidate list for it was full (more candidates may exist: the caller searches wider)."""

    ids: np.ndarray
    distances: np.ndarray
    payload: pa.Table | None
    short: np.ndarray

    @classmethod
    def nothing(cls, nq: int, keep: int, columns: Sequence[str], schema: pa.Schema) -> Found:
        payload = pa.schema([schema.field(c) for c in columns]).empty_table() if columns else None
        return cls(np.full((nq, keep), kernels.NO_ID, np.uint64), np.full((nq, keep), np.inf, np.float32),
                   payload, np.zeros(nq, bool))


def merge_found(parts: list[Found], keep: int) -> Found:
    """The best `keep` per query of the parts (by distance, then row id, as kernels.merge_topk), with the
    payload rows of the ones kept. Parts hold disjoint rows (their tasks scan disjoint rows)."""
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts], axis=1)
    distances = np.concatenate([p.distances for p in parts], axis=1)
    order = np.lexsort((ids, np.where(ids == kernels.NO_ID, np.inf, distances)), axis=-1)[:, :keep]
    ids, distances = np.take_along_axis(ids, order, 1), np.take_along_axis(distances, order, 1)
    found = ids != kernels.NO_ID
    # a part short of keep with its candidates full may hold more matching rows past its last candidate,
    # closer than the other parts' worst kept ones: the merged query is short too, however many it has
    short = np.any([p.short for p in parts], axis=0)
    payload = None
    if parts[0].payload is not None:
        at = np.take_along_axis(np.concatenate(_payload_rows(parts), axis=1), order, 1)[found]
        payload = pa.concat_tables([p.payload for p in parts if p.payload is not None]).take(pa.array(at))
    return Found(ids, distances, payload, short)


def _payload_rows(parts: Sequence[Found]) -> list[np.ndarray]:
    """Each part's candidates' rows in the parts' payloads concatenated, shaped as its ids (-1 where none)."""
    rows, offset = [], 0
    for part in parts:
        hit = (part.ids != kernels.NO_ID).ravel()
        rows.append((np.cumsum(hit) - 1 + offset).reshape(part.ids.shape))
        offset += int(hit.sum())
    return rows


def replace_rows(found: Found, rows: np.ndarray, other: Found) -> Found:
    """`found` with the queries `rows` (ascending query numbers) answered as `other` answers them, its row i
    for query rows[i]: ids, distances, short, and their payload rows in place."""
    ids, distances, short = found.ids.copy(), found.distances.copy(), found.short.copy()
    ids[rows], distances[rows], short[rows] = other.ids, other.distances, other.short
    payload = None
    if found.payload is not None and other.payload is not None:
        at, theirs = _payload_rows([found, other])
        at[rows] = theirs
        payload = pa.concat_tables([found.payload, other.payload.cast(found.payload.schema)]).take(
            pa.array(at[ids != kernels.NO_ID]))
    return Found(ids, distances, payload, short)


@dataclass(eq=False)
class _Batch:
    node: str
    tasks: list[Task]
    blamed: str | None = None  # an executor that answered 500 for these tasks before
    call: InFlight = field(default_factory=InFlight)
    hedged: bool = False  # abandoned by the watchdog because its executor was marked down


@dataclass(frozen=True)
class _WarmPlan:
    """What `_send` reads of a plan, for a prewarm batch: one candidate per query, no filter, and the payload
    columns of the group's last search (so the executor caches them too)."""

    metric: str
    fetch_k: int = 1
    filter: str | None = None
    probes: None = None  # every query (the one) scans every partition of the tasks

    def finishing(self, columns: Sequence[str] = ()) -> Finish:
        return Finish(1, columns=tuple(columns))


class _Outcome:
    """What a batch sent from the search's own thread came to, read as a finished future is."""

    __slots__ = ("error", "value")

    def __init__(self, value: Found | None, error: Exception | None = None) -> None:
        self.value = value
        self.error = error

    def result(self) -> Found:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class _Watchdog:
    """Watches the batches searches send from their own thread, as the search loop watches those it hands
    to the pool: every POLL_SECONDS (sooner for a deadline due sooner) it abandons a batch whose deadline
    passed or whose client is gone, or, when hedging is allowed, whose executor the probe marked down (its
    `hedged` is set, so the search re-sends it elsewhere). One thread per dispatcher, started on first use,
    asleep while nothing is watched, so a search pays no thread hand-off and no wake-up of its own."""

    def __init__(self, membership: Membership) -> None:
        self._membership = membership
        self._cond = threading.Condition()
        self._watched: dict[_Batch, tuple[Deadline, bool]] = {}
        self._wake_at = float("inf")  # when the thread next looks (monotonic); inf while it sleeps
        self._thread: threading.Thread | None = None

    def watch(self, batch: _Batch, deadline: Deadline, hedge: bool) -> None:
        with self._cond:
            self._watched[batch] = (deadline, hedge)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dispatch-watchdog", daemon=True)
                self._thread.start()
            elif deadline.at < self._wake_at:  # due before the thread's next look: wake it now
                self._cond.notify()

    def unwatch(self, batch: _Batch) -> None:
        with self._cond:
            self._watched.pop(batch, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watched:
                    self._wake_at = float("inf")
                    self._cond.wait()
                now = time.monotonic()
                self._wake_at = min(now + POLL_SECONDS, *(d.at for d, _ in self._watched.values()))
                self._cond.wait(max(0.0, self._wake_at - now))
                watched = list(self._watched.items())
            try:
                self._look(watched)
            except Exception:  # noqa: BLE001 - the watchdog must outlive anything one check raises
                log.exception("the dispatch watchdog failed a check")

    def _look(self, watched: list[tuple[_Batch, tuple[Deadline, bool]]]) -> None:
        down = self._membership.unhealthy() if any(hedge for _, (_, hedge) in watched) else set()
        for batch, (deadline, hedge) in watched:
            if deadline.expired() or deadline.gone():
                batch.call.abort()  # the search loop raises DeadlineExceeded or Cancelled
            elif hedge and batch.node in down:
                batch.hedged = True
                batch.call.abort()


class Dispatcher:
    def __init__(
        self, membership: Membership, token: str, timeout: float, eps: float, max_parallel: int = 32,
        search_timeout: float = 30.0, max_hedges: int = 2,
    ) -> None:
        self._membership = membership
        self._token = token
        self._timeout = timeout
        self._eps = eps
        self.search_timeout = search_timeout  # a search's deadline unless the client asks for less
        self._max_hedges = max_hedges
        self._connections = ConnectionPool(timeout, max_idle=max_parallel)
        self._streams = FlightStreams(token, max_idle=max_parallel)
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="dispatch")
        self._watchdog = _Watchdog(membership)
        self.recent = RecentGroups()  # routing groups searched lately: what a joining executor prewarms

    # metrics hook (appliance/metrics.py): called with (seconds, ok) once per executor batch
    on_batch: Callable[[float, bool], None] | None = None

    def _observe(self, started: float, ok: bool) -> None:
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started, ok)

    def assignment(self, plan: SearchPlan) -> dict[str, list[Task]]:
        """Which executor runs which task, given the members currently believed alive."""
        return self._assign(plan.tasks, self._membership.down(), self._membership.ring)

    def _assign(self, tasks: list[Task], exclude: set[str], ring: HashRing,
                remember: tuple[SearchPlan, np.ndarray, Sequence[str]] | None = None) -> dict[str, list[Task]]:
        by_key: dict[str, list[Task]] = {}  # many tasks share a key: a routing group (planner/plan.py)
        for task in tasks:
            by_key.setdefault(task.key, []).append(task)
        if remember is not None:
            self.recent.remember(by_key, remember[0].metric, remember[1], remember[2])
        try:
            groups = ring.assign(list(by_key), eps=self._eps, exclude=exclude)
        except NoLiveNodes as exc:
            raise Unavailable("no executor is available to run the query") from exc
        return {node: [t for k in keys for t in by_key[k]] for node, keys in groups.items()}

    def search(self, plan: SearchPlan, queries: np.ndarray, request_id: str = "",
               deadline: Deadline | None = None, columns: Sequence[str] = (),
               schema: pa.Schema | None = None) -> Found:
        """The plan's finished results: each executor finishes the candidates of its tasks and returns its
        top `plan.k` with their payload `columns` (SearchPlan.finishing), and they are merged here. Raises
        DeadlineExceeded when `deadline` (default: `search_timeout` from now) passes, Cancelled when its
        client is gone, and the executors' own verdict when they refuse the request. `schema` (the table's)
        types the columns of a plan with no task."""
        deadline = deadline or Deadline.after(self.search_timeout)
        finish = plan.finishing(columns)
        parts: list[Found] = []
        running: dict[Future[Found], _Batch] = {}
        ready: list[tuple[_Batch, _Outcome]] = []  # batches sent from this thread, answered
        avoid: set[str] = set()  # members this search sends nothing more to
        hedges = 0
        ring = self._membership.ring  # this search's ring, retries included, whatever joins or leaves meanwhile

        def launch(tasks: list[Task], blamed: str | None = None, inline: bool = False) -> None:
            assignment = self._assign(tasks, self._membership.down() | avoid, ring,
                                      (plan, queries, columns) if inline else None)
            if inline and len(assignment) == 1:  # the usual case: no thread hand-off, the watchdog watches it
                (node, group), = assignment.items()
                batch = _Batch(node, group, blamed)
                ready.append((batch, self._send_here(batch, plan, finish, queries, request_id, deadline,
                                                     hedge=hedges < self._max_hedges)))
                return
            for node, group in assignment.items():
                batch = _Batch(node, group, blamed)
                running[self._pool.submit(self._send, batch, plan, finish, queries, request_id, deadline)] = batch

        try:
            launch(plan.tasks, inline=True)
            while running or ready:
                deadline.check()
                if ready:
                    finished: list[tuple[_Batch, _Outcome | Future[Found]]] = [*ready]
                    ready.clear()
                else:
                    done, _ = wait(running, timeout=min(POLL_SECONDS, max(0.0, deadline.remaining())),
                                   return_when=FIRST_COMPLETED)
                    finished = [(running.pop(future), future) for future in done]
                for batch, future in finished:
                    try:
                        parts.append(future.result())
                    except ExecutorFailed as exc:
                        if batch.hedged:  # the watchdog abandoned it: its executor went down meanwhile
                            hedges += 1
                            log.warning("executor %s went down while running %d tasks; re-sending them",
                                        batch.node, len(batch.tasks))
                            avoid.add(batch.node)
                            launch(batch.tasks, batch.blamed)
                            continue
                        log.warning("executor %s failed (%s); rerouting %d tasks", batch.node, exc, len(batch.tasks))
                        self._membership.mark_down(batch.node, str(exc))
                        avoid.add(batch.node)
                        launch(batch.tasks, batch.blamed)
                        continue
                    except ExecutorError as exc:
                        if batch.blamed is not None:
                            raise ExecutorsFailed(f"executors failed the task batch: {exc}", exc.detail) from exc
                        log.warning("executor %s failed (%s); trying %d tasks elsewhere", batch.node, exc,
                                    len(batch.tasks))
                        avoid.add(batch.node)
                        try:
                            launch(batch.tasks, blamed=batch.node)
                        except Unavailable:  # no other executor to ask: the error stands
                            raise ExecutorsFailed(f"an executor failed the task batch: {exc}", exc.detail) from exc
                        continue
                    if batch.blamed is not None:  # another executor ran what the blamed one failed
                        self._membership.mark_down(batch.blamed, "failed tasks another executor ran")
                if running and hedges < self._max_hedges:
                    down = self._membership.unhealthy()  # not draining ones: they finish what they run
                    for future, batch in list(running.items()):
                        if batch.node in down and hedges < self._max_hedges:
                            hedges += 1
                            log.warning("executor %s went down while running %d tasks; re-sending them",
                                        batch.node, len(batch.tasks))
                            del running[future]
                            batch.call.abort()
                            avoid.add(batch.node)
                            launch(batch.tasks, batch.blamed)
        except BaseException:
            for batch in running.values():
                batch.call.abort()  # the executor sees its connection close and stops the batch
            raise
        if not parts:
            return Found.nothing(len(queries), finish.keep, finish.columns, schema or pa.schema([]))
        return merge_found(parts, finish.keep)

    def prewarm(self, node: str, ring: HashRing, seconds: float) -> PrewarmReport:
        """Have `node`, about to join with `ring`, load the groups `ring` gives it that this query node
        searched lately (appliance/routing/prewarm.py): each group's last tasks, sent as an ordinary batch
        with one query vector and k = 1, until `seconds` pass. Runs on the membership's join thread."""
        started = time.monotonic()
        deadline = Deadline.after(seconds)
        todo = self.recent.owned_by(node, ring, self._membership.down() - {node}, self._eps)
        report = PrewarmReport(groups=len(todo))
        for warm in todo:
            if deadline.remaining() <= 0:
                report.error = f"prewarm deadline of {seconds:g} s passed"
                break
            batch = _Batch(node, list(warm.tasks))  # no probes: the one query scans every partition
            plan = _WarmPlan(warm.metric)
            try:
                self._send_here(batch, plan, plan.finishing(warm.columns), warm.query[None, :], f"prewarm-{warm.key}",  # type: ignore[arg-type]
                                deadline, hedge=False).result()
            except (ApplianceError, ExecutorFailed, ExecutorError, Cancelled) as exc:
                report.error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ExecutorFailed | DeadlineExceeded) or deadline.remaining() <= 0:
                    break  # it cannot be reached, or time is up: join (or not) as it is
                continue  # this group only (say, a table dropped since): the others still load
            report.warmed += 1
        report.seconds = time.monotonic() - started
        return report

    def _send_here(self, batch: _Batch, plan: SearchPlan, finish: Finish, queries: np.ndarray,
                   request_id: str, deadline: Deadline, hedge: bool) -> _Outcome:
        """`_send` on the calling thread, watched by the watchdog (which abandons the batch when the deadline
        passes, the client is gone, or, with `hedge`, its executor is marked down), its outcome kept for the
        search loop, which then treats it as it treats a batch sent from the pool."""
        self._watchdog.watch(batch, deadline, hedge)
        try:
            return _Outcome(self._send(batch, plan, finish, queries, request_id, deadline))
        except Exception as exc:  # noqa: BLE001 - the search loop raises or handles it, as a future's
            return _Outcome(None, exc)
        finally:
            self._watchdog.unwatch(batch)

    def _send(self, batch: _Batch, plan: SearchPlan, finish: Finish, queries: np.ndarray, request_id: str,
              deadline: Deadline) -> Found:
        """Run one batch on its executor: over Arrow Flight when the executor's /readyz named a Flight port,
        else over HTTP (an executor of an older version, or Flight turned off). Both transports' failures
        end in the same classes, so who is blamed does not depend on the transport."""
        header = {"k": plan.fetch_k, "metric": plan.metric, "filter": plan.filter,
                  TIMEOUT_FIELD: max(1, int(deadline.remaining() * 1000)), REQUEST_ID_FIELD: request_id,
                  **finish.to_header()}
        if self._membership.wire(batch.node) < WIRE_LEVEL:  # an executor of an older version, mid-upgrade
            header["tasks"] = legacy_tasks(batch.tasks, plan.probes)
        else:
            header["tasks"] = [t.to_json() for t in batch.tasks]
            if plan.probes is not None and any(t.kind == PARTITION for t in batch.tasks):
                header[PROBES_FIELD] = plan.probes_doc
        location = self._membership.flight_location(batch.node)
        started = time.perf_counter()
        try:
            if location is not None:
                doc, answer, payload = self._streams.exchange(location, header, queries_batch(queries),
                                                              batch.call)
                status = int(doc.get("status", 200))
                error = (str(doc.get("code", "")), str(doc.get("error", "")), doc.get("detail"))
            else:
                status, content = self._connections.request(
                    "POST", batch.node, "/internal/v1/search", encode(header, [queries]),
                    {INTERNAL_TOKEN_HEADER: self._token, "content-type": CONTENT_TYPE, "x-request-id": request_id},
                    batch.call)
                error = _error_of(content) if status != 200 else ("", "", None)
        except (OSError, http.client.HTTPException) as exc:
            self._observe(started, False)
            raise ExecutorFailed(str(exc) if location is not None else type(exc).__name__) from exc
        self._observe(started, status < 400)
        if status != 200:
            raise _failure(status, *error)
        try:
            if location is not None:
                ids, dists = result_of(answer, len(queries), finish.keep)
            else:
                doc, arrays = decode(content)
                if len(arrays) not in (2, 3):
                    raise WireError(f"an answer of ids, distances and payload expected, got {len(arrays)} arrays")
                ids, dists = arrays[0], arrays[1]
                payload = arrays[2] if len(arrays) == 3 else None
                if ids.shape != (len(queries), finish.keep) or dists.shape != ids.shape:
                    raise WireError(f"an answer of {len(queries)} x {finish.keep} expected, got {ids.shape}")
            return _found(doc, ids, dists, payload, finish)
        except WireError as exc:
            raise ExecutorError("the executor answered a malformed task batch result", str(exc)) from exc


def _found(doc: dict[str, object], ids: np.ndarray, dists: np.ndarray, payload: bytes | np.ndarray | None,
           finish: Finish) -> Found:
    """One executor's answer read: its payload columns (when asked for) and its short queries."""
    table = None
    if finish.columns:
        if payload is None:
            raise WireError("the answer carries no payload columns")  # an executor older than this node
        table = payload_of(payload, int(np.count_nonzero(ids != kernels.NO_ID)))
    short = np.zeros(len(ids), bool)
    listed = doc.get("short") or []
    if not isinstance(listed, list) or not all(isinstance(q, int) and 0 <= q < len(ids) for q in listed):
        raise WireError(f"the answer's short queries are not query numbers: {str(listed)[:100]}")
    short[listed] = True
    return Found(ids, dists, table, short)


def _failure(status: int, code: str, message: str, detail: str | None) -> Exception:
    """What an executor's refusal of a batch means, from its HTTP status (the Flight transport carries the
    same status in its answer's metadata)."""
    if status == 504 or code == DeadlineExceeded.code:
        return DeadlineExceeded(f"the search ran past its deadline on an executor: {message}", detail)
    if status in (401, 403) or status >= 502 or status == Cancelled.status:
        # 401/403: this executor has another internal token, a misconfigured member, not bad input;
        # 503: draining or cut off from storage; 499: it saw our connection close
        return ExecutorFailed(f"HTTP {status} {code}")
    if status >= 500:
        return ExecutorError(f"HTTP {status} {code}: {message}", detail or "")
    return ExecutorRejected(status, code, f"executor rejected the task batch: {message}", detail)


def _error_of(content: bytes) -> tuple[str, str, str | None]:
    """(code, message, detail) of an executor's JSON error."""
    try:
        doc = orjson.loads(content)
        return str(doc.get("code", "")), str(doc.get("error", "")), doc.get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return "", content[:200].decode("utf-8", "replace"), None


# ---- The Flight transport: open Arrow Flight streams to executors (the search hop) -----------------------
# The search hop's data plane, from the query node's side.
#
# Per executor the pool keeps one FlightClient (one gRPC channel, which multiplexes its calls over one
# connection) and idle DoExchange streams on it, last used first; a task batch takes a stream, writes one
# message (the batch) and reads one (its answer), and gives the stream back (appliance/planner/plan.py has the
# messages, appliance/executor/runner.py the server). An answer the executor decided, an error included,
# leaves the stream usable.
#
# Every way the transport can fail (refused, reset, cancelled, timed out, refused our token, a stream that
# ends) becomes one exception, `StreamBroken` (an OSError, as the HTTP transport's failures are), in one
# place, `transport_errors`; the stream that failed is dropped, and with it the executor's channel and idle
# streams, since they are likely on the same dead connection (an executor killed and restarted). A stream
# taken from the pool that fails is retried once on a fresh one, as appliance/routing/connections.py retries a
# reused keep-alive connection, since it may have been broken while idle; searches are read-only, so sending a
# batch again is safe.
#
# A batch can be abandoned from another thread (`InFlight.abort`, a deadline or a hedge): its stream is
# cancelled, which unblocks the thread reading it at once and tells the executor, which stops the batch at its
# next task.

_DESCRIPTOR = flight.FlightDescriptor.for_command(b"search")


class StreamBroken(ConnectionError):
    """The executor could not be reached over Flight, or its stream broke before the answer came."""


@contextlib.contextmanager
def transport_errors() -> Iterator[None]:
    """Turn every transport failure of a Flight call into StreamBroken (the one mapping of them)."""
    try:
        yield
    except StopIteration as exc:
        raise StreamBroken("the executor ended the stream") from exc
    except flight.FlightError as exc:  # unavailable, cancelled, timed out, unauthenticated, internal, server
        raise StreamBroken(f"{type(exc).__name__}: {_first_line(exc)}") from exc
    except (pa.ArrowException, OSError) as exc:  # ArrowIOError and friends: the connection itself
        raise StreamBroken(f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).split(". gRPC client debug context", 1)[0][:200]


@dataclass(eq=False)
class _Stream:
    client: flight.FlightClient
    writer: flight.FlightStreamWriter
    reader: flight.FlightStreamReader
    generation: int

    def close(self) -> None:
        """Cancel the call and close its writer (which then has nothing to say on its way out)."""
        for step in (self.reader.cancel, self.writer.close):
            try:
                step()
            except Exception:  # noqa: BLE001, S110 - closing a cancelled stream: nothing left to tell anyone
                pass


@dataclass
class _Executor:
    client: flight.FlightClient | None = None
    generation: int = 0
    idle: list[_Stream] = field(default_factory=list)


class FlightStreams:
    """Idle DoExchange streams per executor location (`grpc+tcp://host:port`), shared by the threads using it."""

    def __init__(self, token: str, max_idle: int = 32) -> None:
        self._options = flight.FlightCallOptions(headers=[(INTERNAL_TOKEN_HEADER.encode(), token.encode())])
        self._max_idle = max_idle
        self._executors: dict[str, _Executor] = {}
        self._lock = threading.Lock()

    def exchange(self, location: str, header: dict[str, Any], batch: pa.RecordBatch, call: InFlight
                 ) -> tuple[dict[str, Any], pa.RecordBatch, bytes | None]:
        """(app_metadata's JSON document, record batch, the payload bytes after the document or None)
        answering one message (answer_metadata). Raises StreamBroken when the executor cannot be
        reached or the stream breaks (or `call` is aborted)."""
        meta = orjson.dumps(header)
        stream, reused = self._checkout(location)
        try:
            answer = self._round_trip(stream, meta, batch, call)
        except StreamBroken:
            if call.aborted:  # cancelled by us: the executor and its other streams are fine
                stream.close()
                raise
            self._discard(location, stream)
            if not reused:
                raise
            stream, _ = self._checkout(location)  # a fresh channel and stream: the pooled one was stale
            try:
                answer = self._round_trip(stream, meta, batch, call)
            except StreamBroken:
                self._discard(location, stream)
                raise
        if call.detach():
            self._checkin(location, stream)
        else:
            stream.close()  # abandoned after all: it may be cancelled under us, so never reuse it
        return answer

    def close(self) -> None:
        with self._lock:
            executors, self._executors = self._executors, {}
        for executor in executors.values():
            for stream in executor.idle:
                stream.close()
            if executor.client is not None:
                executor.client.close()

    def _round_trip(self, stream: _Stream, meta: bytes, batch: pa.RecordBatch, call: InFlight
                    ) -> tuple[dict[str, Any], pa.RecordBatch, bytes | None]:
        with transport_errors():
            try:
                call.on_abort(stream.reader.cancel)
            except ConnectionAbortedError as exc:
                raise StreamBroken("the batch was abandoned") from exc
            stream.writer.write_with_metadata(batch, meta)
            chunk = stream.reader.read_chunk()
        try:
            doc, payload = split_metadata(chunk.app_metadata.to_pybytes()) if chunk.app_metadata is not None else (
                {}, None)
        except orjson.JSONDecodeError as exc:
            raise StreamBroken(f"the executor answered metadata that is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or chunk.data is None:
            raise StreamBroken("the executor answered a message that is not an answer")
        return doc, chunk.data, payload

    def _checkout(self, location: str) -> tuple[_Stream, bool]:
        with self._lock:
            executor = self._executors.setdefault(location, _Executor())
            if executor.idle:
                return executor.idle.pop(), True
            if executor.client is None:
                executor.client = flight.FlightClient(location)
            client, generation = executor.client, executor.generation
        with transport_errors():
            writer, reader = client.do_exchange(_DESCRIPTOR, options=self._options)
            writer.begin(QUERY_SCHEMA)
        return _Stream(client, writer, reader, generation), False

    def _checkin(self, location: str, stream: _Stream) -> None:
        with self._lock:
            executor = self._executors.get(location)
            current = executor is not None and executor.generation == stream.generation
            if current and executor is not None and len(executor.idle) < self._max_idle:
                executor.idle.append(stream)
                return
        stream.close()

    def _discard(self, location: str, stream: _Stream) -> None:
        """Drop a broken stream and, when it was on the current channel, the channel and its idle streams:
        the next batch connects afresh (to a restarted executor, or finds it gone)."""
        stream.close()
        with self._lock:
            executor = self._executors.get(location)
            if executor is None or executor.generation != stream.generation:
                return
            stale, executor.idle = executor.idle, []
            executor.client = None  # closed once the streams still running on it are done
            executor.generation += 1
        for old in stale:
            old.close()
