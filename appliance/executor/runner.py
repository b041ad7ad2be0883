"""The executor's side of a search: its Flight server takes task batches, and `TaskRunner` runs each batch
(fragment flat scans, IVF partition scans), finishes its candidates and returns the payload columns of
what it keeps. The HTTP fallback (appliance/executor/app.py) runs batches through the same `TaskRunner`.

Everything a task scans comes through the executor's tiered cache, under keys that name immutable objects:
a fragment's data files and deletion file at the pinned version, an index object's id. Finishing reads
through the same cache: an IVF batch's candidates are looked up in their fragments' cached live rows
(`_rowid` + vectors, the entries exact scans use; a row id's fragment is found from the fragments'
row-id spans, stable row ids being unique at a version), which drops rows deleted since the index was
built, and gives the exact vectors a refine re-ranks with; a post-filter keeps the candidates among the
fragment's cached matching ids. The payload columns of the rows kept come from the fragment's columns,
cached as an Arrow table (`<fragment key>?columns=...`). So a warm search reads nothing through Lance,
here or on the query node.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.flight as flight
from lance.fragment import LanceFragment

import kernels
from appliance.cache import TieredCache
from appliance.cache.codec import ARROW
from appliance.drain import DrainState
from appliance.errors import ApplianceError, InvalidInput
from appliance.executor.partition import PartitionScanner
from appliance.index.manifest import ObjectRef
from appliance.index.store import CorruptIndexObject, IndexStore
from appliance.launch import bind_address
from appliance.lru import Lru
from appliance.planner.plan import (
    EMPTY_RESULT,
    FRAGMENT,
    INTERNAL_TOKEN_HEADER,
    PARTITION,
    REQUEST_ID_FIELD,
    RESULT_SCHEMA,
    Finish,
    Task,
    WireError,
    answer_metadata,
    probes_of,
    queries_of,
    result_batch,
)
from appliance.storage.tables import TableSnapshot, TableStore, fragment_cache_key, read_fragment_vectors
from kernels.refine import candidate_distances

log = logging.getLogger("appliance.executor")


@dataclass
class BatchStats:
    """What a batch did, and what its answer carries besides ids and distances: the queries whose finished
    results came up short of `keep` while their candidate list was full (more candidates may exist: the
    query node searches wider), and the payload columns of the results kept (None when none were asked)."""

    tasks: int = 0
    rows_scanned: int = 0
    seconds: float = 0.0
    short: list[int] = field(default_factory=list)
    payload: pa.Table | None = None


class _Version:
    """A pinned table version as this executor reads it: its snapshot, and, worked out once, its
    fragments' row-id spans and cache keys (what finishing needs to find a row id's fragment)."""

    def __init__(self, snapshot: TableSnapshot) -> None:
        self.snapshot = snapshot
        self._spans: list[tuple[int, int, int]] | None = None
        self._fragments: dict[int, tuple[LanceFragment, str] | None] = {}

    def spans(self) -> list[tuple[int, int, int]]:
        """(fragment id, smallest, largest live row id) of every fragment holding live rows."""
        if self._spans is None:
            self._spans = [(fid, lo, hi) for fid, (lo, hi) in sorted(self.snapshot.fragment_row_ranges().items())
                           if hi >= lo]
        return self._spans

    def holding(self, row_ids: np.ndarray) -> Iterator[tuple[int, LanceFragment, str, int, int]]:
        """(fragment id, fragment, cache key, first, last) of each fragment whose row-id span holds some of
        `row_ids` (sorted, unique): row_ids[first:last]. Spans may overlap (compaction keeps row ids)."""
        for fragment_id, lo, hi in self.spans():
            first, last = int(np.searchsorted(row_ids, lo)), int(np.searchsorted(row_ids, hi, "right"))
            known = self.fragment(fragment_id) if first < last else None
            if known is not None:
                yield fragment_id, *known, first, last

    def fragment(self, fragment_id: int) -> tuple[LanceFragment, str] | None:
        """The fragment and its cache key (None when the version has no such fragment)."""
        if fragment_id not in self._fragments:
            fragment = self.snapshot.dataset.get_fragment(fragment_id)
            self._fragments[fragment_id] = None if fragment is None else (
                fragment, fragment_cache_key(self.snapshot.name, fragment))
        return self._fragments[fragment_id]


class TaskRunner:
    """Runs each task kind with one small method; results of all tasks are merged here."""

    def __init__(self, store: TableStore, indexes: IndexStore, cache: TieredCache) -> None:
        self.cache = cache
        self._store = store
        self._indexes = indexes
        self._versions: Lru[_Version] = Lru(64)
        self._orders: Lru[np.ndarray | None] = Lru(4096)  # cached ids' sort order (None: sorted), per key
        self._partitions = PartitionScanner(indexes, load=self._index_object)

    def run(
        self, tasks: list[Task], queries: np.ndarray, k: int, metric: str, predicate: str | None,
        check: Callable[[], None] | None = None, finish: Finish | None = None, probes: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, BatchStats]:
        """The top `finish.keep` per query of all tasks' rows, finished here, so only nq x keep results
        (and their payload columns) go back over the network.

        The filter applies to fragment tasks (exact prefilter); partition tasks find `k` unfiltered
        candidates per query, which `finish` post-filters, checks for deletion and refines as it says
        (`_finish`); each of their partitions for the queries `probes` (the plan's [nq, nprobes] partitions
        of each query) says probe it, or, without `probes`, for every query. `check` runs before every task
        (and every index's partitions) and raises to stop the batch: its deadline passed, or the query node
        hung up.
        """
        finish = finish or Finish(k)
        check = check or _no_check
        started = time.perf_counter()
        stats = BatchStats()
        unknown = sorted({t.kind for t in tasks} - {FRAGMENT, PARTITION})
        if unknown:
            raise InvalidInput(f"this executor does not run {', '.join(map(repr, unknown))} tasks")
        parts = []
        for task in tasks:
            if task.kind == FRAGMENT:
                check()
                ids, dists, rows = self._fragment(task, queries, k, metric, predicate)
                parts.append((ids, dists))
                stats.rows_scanned += rows
        for (table, index_version), group in _by_index(tasks).items():
            check()
            ids, dists, rows = self._scan_partitions(table, index_version, _work(group, probes), queries, k,
                                                     max(t.ef for t in group))
            parts.append((ids, dists))
            stats.rows_scanned += rows
        stats.tasks = len(tasks)
        if not parts:
            parts.append(_no_rows(queries, metric, k))
        ids, dists = kernels.merge_topk(parts, k) if len(parts) > 1 else parts[0]
        if tasks:
            check()
            version = self._version(tasks[0].table, tasks[0].version)  # a plan pins one version
            ids, dists, stats.short = self._finish(version, queries, ids, dists, metric, predicate, finish)
            if finish.columns:
                stats.payload = self._payload(version, ids, list(finish.columns))
        else:
            ids, dists = ids[:, :finish.keep], dists[:, :finish.keep]
        stats.seconds = time.perf_counter() - started
        return ids, dists, stats

    def _finish(self, version: _Version, queries: np.ndarray, ids: np.ndarray, dists: np.ndarray, metric: str,
                predicate: str | None, finish: Finish) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The best `finish.keep` (ids, distances) per query of the candidates, after dropping rows gone at
        the pinned version (`verify`), rows failing the filter (`postfilter`), re-ranked by exact distance
        (`refine`); and the queries that came up short while their candidate list was full."""
        valid = ids != kernels.NO_ID
        if not finish.drops or not valid.any():
            return ids[:, :finish.keep], dists[:, :finish.keep], []
        candidates = np.unique(ids[valid])
        keep = np.zeros(len(candidates), bool)  # alive at the version (and matching the post-filter)
        vectors = np.zeros((len(candidates), queries.shape[1]), np.float32) if finish.refine else None
        for found in self._locate(version, candidates):
            hit = np.flatnonzero(found.at >= 0)
            if finish.postfilter and predicate is not None:
                hit = hit[self._matching(found, predicate, candidates[found.lo + hit])]
            keep[found.lo + hit] = True
            if vectors is not None:
                vectors[found.lo + hit] = found.rows["vectors"][found.at[hit]]
        position = np.searchsorted(candidates, ids)
        position[~valid] = 0
        mask = valid & keep[position]
        if vectors is not None:
            dists = candidate_distances(queries, vectors[position], metric)
        ids = np.where(mask, ids, kernels.NO_ID)
        dists = np.where(mask, dists, np.inf).astype(np.float32)
        ids, dists = kernels.merge_topk([(ids, dists)], finish.keep)
        short = ((ids != kernels.NO_ID).sum(axis=1) < finish.keep) & valid[:, -1]
        return ids, dists, np.flatnonzero(short).tolist()

    def _locate(self, version: _Version, row_ids: np.ndarray) -> Iterator[_Found]:
        """For each fragment whose row-id span holds some of `row_ids` (sorted, unique), those ids' positions
        in its cached live rows (-1: not alive there), the rows pinned until the caller asks for the next."""
        for fragment_id, fragment, key, first, last in version.holding(row_ids):
            with self.cache.pinned(key, self._fragment_loader(version.snapshot, fragment_id)) as rows:
                yield _Found(fragment, key, rows, first, self._positions(key, rows["ids"], row_ids[first:last]))

    def _positions(self, key: str, ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """Where each of `wanted` is in `ids` (the cached array under `key`), -1 where it is not."""
        order = self._orders.get_or_load(key, lambda: None if np.all(ids[1:] >= ids[:-1]) else np.argsort(ids))
        ordered = ids if order is None else ids[order]
        if not len(ordered):
            return np.full(len(wanted), -1, np.int64)
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        at = np.where(ordered[at] == wanted, at, -1)
        return at if order is None else np.where(at >= 0, order[at], -1)

    def _matching(self, found: _Found, predicate: str, wanted: np.ndarray) -> np.ndarray:
        """Which of `wanted` (live rows of the fragment) match the filter: a mask, from the fragment's matching
        ids, cached as the filtered exact scan caches them."""
        key = f"{found.key}?filter={predicate}"
        matching = self.cache.get(key, lambda: {"ids": matching_row_ids(found.fragment, predicate)})["ids"]
        return self._positions(key, matching, wanted) >= 0

    def _payload(self, version: _Version, ids: np.ndarray, columns: list[str]) -> pa.Table:
        """The `columns` of the found results (ids not NO_ID), row by row in the order of `ids`, from each
        fragment's columns (cached as an Arrow table: its live row ids, sorted, then the columns).

        Rows are gathered per fragment and column: fixed-width numeric columns with numpy on the cached
        arrays' memory, others with one Arrow `take` per fragment. Taking from the fragments' tables
        concatenated (a chunked table) cost ~250 us for 10 results over 8 fragments, since Arrow's take
        joins a chunked column's chunks first; this path ~10x less for numeric columns."""
        wanted = ids[ids != kernels.NO_ID]
        unique, inverse = np.unique(wanted, return_inverse=True)
        found = np.zeros(len(unique), bool)
        pieces: list[tuple[pa.Table, np.ndarray, np.ndarray]] = []  # (table, which of unique, their rows in it)
        for _, fragment, key, first, last in version.holding(unique):
            key = f"{key}?columns={','.join(columns)}"
            table = self.cache.get(key, lambda fragment=fragment: _fragment_columns(fragment, columns), ARROW)
            if not table.num_rows:
                continue
            row_ids = _one_chunk(table.column(0)).to_numpy()
            span = unique[first:last]
            at = np.minimum(np.searchsorted(row_ids, span), len(row_ids) - 1)
            hit = (row_ids[at] == span) & ~found[first:last]
            if hit.any():
                found[first:last] |= hit
                pieces.append((table, first + np.flatnonzero(hit), at[hit]))
        if not found.all():
            missing, snapshot = unique[~found][:5].tolist(), version.snapshot
            raise RuntimeError(f"results {missing} have no live row in {snapshot.name} v{snapshot.version}")
        if not pieces:  # the table's schema only here: reading a Lance dataset's schema costs every batch
            schema = version.snapshot.dataset.schema
            return pa.schema([schema.field(c) for c in columns]).empty_table()
        gathered = np.concatenate([which for _, which, _ in pieces])  # the gathered rows, as positions in unique
        rank = np.empty(len(unique), np.int64)
        rank[gathered] = np.arange(len(gathered))
        order = rank[inverse]  # each result's row among the gathered ones
        rows = [rows for _, _, rows in pieces]
        return pa.table([_gather([_one_chunk(t.column(c)) for t, _, _ in pieces], rows, order) for c in columns],
                        schema=pieces[0][0].select(columns).schema)

    def _scan_partitions(self, table: str, index_version: int, work: list[tuple[int, Sequence[int] | None]],
                         queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray, int]:
        """One pass over the partitions of one index version. Manifests are cached by (table, version),
        which a dropped and rebuilt index can reuse (IndexStore numbers versions from 1 again once all
        are deleted): a cached manifest then names objects that are gone. So a missing object costs the
        cached manifests, and the scan runs once more on manifests read afresh."""
        try:
            return self._partitions.scan_many(table, index_version, work, queries, k, ef)
        except CorruptIndexObject as exc:
            log.warning("index %s v%d: %s; reading its manifest again", table, index_version, exc.message)
            self._partitions = PartitionScanner(self._indexes, load=self._index_object)
            return self._partitions.scan_many(table, index_version, work, queries, k, ef)

    def _version(self, table: str, version: int) -> _Version:
        return self._versions.get_or_load((table, version), lambda: _Version(self._store.snapshot(table, version)))

    @staticmethod
    def _fragment_loader(snapshot: TableSnapshot, fragment_id: int) -> Callable[[], dict[str, np.ndarray]]:
        def load() -> dict[str, np.ndarray]:
            ids, vectors = read_fragment_vectors(snapshot, fragment_id)
            return {"ids": ids, "vectors": vectors}

        return load

    def _fragment(self, task: Task, queries: np.ndarray, k: int, metric: str, predicate: str | None
                  ) -> tuple[np.ndarray, np.ndarray, int]:
        """Flat scan of one fragment's live rows (those matching the filter, ids >= min_row_id).

        The cache holds the fragment's unfiltered rows, so every filter reuses them; a filter costs only the
        ids of its matching rows, read from the payload columns without the vectors and cached as well.
        """
        version = self._version(task.table, task.version)
        known = version.fragment(task.fragment_id)
        if known is None:
            return (*_no_rows(queries, metric, k), 0)
        fragment, key = known
        with self.cache.pinned(key, self._fragment_loader(version.snapshot, task.fragment_id)) as rows:
            ids, vectors = rows["ids"], rows["vectors"]
            keep = ids >= task.min_row_id if task.min_row_id else None
            if predicate is not None:
                matching = self.cache.get(f"{key}?filter={predicate}",
                                          lambda: {"ids": matching_row_ids(fragment, predicate)})["ids"]
                keep = np.isin(ids, matching) if keep is None else keep & np.isin(ids, matching)
            if keep is not None:
                ids, vectors = ids[keep], vectors[keep]
            found, dists = kernels.search_block(queries, vectors, ids, metric, k)
        return found, dists, len(ids)

    def _index_object(self, ref: ObjectRef) -> dict[str, np.ndarray]:
        """An index object (centroids, partition, delta) through the cache; its storage key is a fresh
        uuid per object, so it is immutable."""
        return self.cache.get(f"index/{ref.key}", lambda: self._indexes.get_object(ref)[0])


@dataclass(frozen=True)
class _Found:
    """Candidates lo, lo+1, ... (of a sorted array) that fall in one fragment's row-id span: their positions
    `at` in its cached live rows (-1: not alive)."""

    fragment: LanceFragment
    key: str
    rows: dict[str, np.ndarray]
    lo: int
    at: np.ndarray


def _fragment_columns(fragment: LanceFragment, columns: list[str]) -> pa.Table:
    """A fragment's live rows' `_rowid` (sorted) and `columns`, in one chunk each: what payloads are taken from."""
    table = fragment.to_table(columns=columns, with_row_id=True)
    ids = table.column("_rowid").to_numpy()
    table = table.select(["_rowid", *columns])
    if len(ids) > 1 and not np.all(ids[1:] >= ids[:-1]):
        table = table.take(pa.array(np.argsort(ids, kind="stable")))
    return table.combine_chunks()


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _gather(arrays: list[pa.Array], rows: list[np.ndarray], order: np.ndarray) -> pa.Array:
    """rows[i] of arrays[i], concatenated, then reordered by `order`."""
    kind = arrays[0].type
    if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and not any(a.null_count for a in arrays):
        values = np.concatenate([a.to_numpy(zero_copy_only=True)[r] for a, r in zip(arrays, rows, strict=True)])
        return pa.array(values[order], type=kind)
    taken = pa.concat_arrays([a.take(pa.array(r)) for a, r in zip(arrays, rows, strict=True)])
    return taken.take(pa.array(order))


def _no_check() -> None:
    return None


def _work(tasks: list[Task], probes: np.ndarray | None) -> list[tuple[int, Sequence[int] | None]]:
    """(partition, the queries that scan it or None for all) of every partition of `tasks`: a task's own
    `queries` (an older query node's), else as `probes` says. A plan gives all its partition tasks one ef."""
    work = [(p, t.queries) for t in tasks for p in t.partitions]
    if probes is None:
        return work
    free = [i for i, (_, queries) in enumerate(work) if queries is None]
    for i, rows in zip(free, probes_of(probes, [work[i][0] for i in free]), strict=True):
        if rows is not None and not len(rows):
            raise ValueError(f"partition {work[i][0]} of a task is probed by no query of the batch")
        work[i] = (work[i][0], rows)
    return work


def _by_index(tasks: list[Task]) -> dict[tuple[str, int], list[Task]]:
    """Partition tasks grouped by the index version they read: each group is scanned in one pass."""
    groups: dict[tuple[str, int], list[Task]] = {}
    for task in tasks:
        if task.kind == PARTITION:
            groups.setdefault((task.table, task.index_version), []).append(task)
    return groups


def _no_rows(queries: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (padding-only) top k of nothing, in the shape every part of a merge has."""
    return kernels.search_block(queries, np.empty((0, queries.shape[1]), np.float32), np.empty(0, np.uint64),
                                metric, k)


def matching_row_ids(fragment: LanceFragment, predicate: str) -> np.ndarray:
    """Ids of the fragment's live rows matching a filter, read from the columns the filter names only."""
    table = fragment.to_table(columns=[], filter=predicate, with_row_id=True)
    return table.column("_rowid").to_numpy().astype(np.uint64, copy=False)


# ---- The Flight server: task batches over Arrow Flight ---------------------------------------------------
# The executor's data plane, beside its HTTP control plane.
#
# The gunicorn + Flask app (appliance/executor/app.py) keeps health, readiness, drain, /metrics and the
# cache's stats, so operators, Prometheus, Terraform and Ansible reach an executor as before; the search hop
# itself, once per query per executor, runs here, where a round trip costs about half the CPU of a Flask
# request under gunicorn (issue 15).
#
# A query node keeps DoExchange streams open (appliance/query/dispatch.py) and sends one task batch per
# message; each message is answered by one message on the same stream (appliance/planner/plan.py has the
# format), an error included, so a refused batch leaves the stream usable. Per call, the server middleware
# checks the internal token (`x-appliance-token`, in constant time); per message, the drain gate counts the
# batch in (or refuses it while drained, answered 503 `draining` as the HTTP path does, which the dispatcher
# treats as a failed executor and reroutes), and the batch stops between tasks once its deadline passes or the
# query node cancels the stream (it abandons a batch that way: a deadline, a hedge, a client gone).
#
# The server runs in the gunicorn worker, in its own threads (gRPC's), on the worker's HTTP port plus the
# `flight_port_offset` setting, and stops when the worker exits: it refuses new batches, waits a moment for
# those running, then shuts down. Streams the query nodes keep open would hold a gRPC shutdown (and the
# process's exit) forever, so past that moment the worker exits at once; the query nodes see their streams
# break and open fresh ones to whoever serves the port next.

EXIT_GRACE_SECONDS = 5.0  # how long an exiting worker lets the batches it runs finish
flight_log = logging.getLogger("appliance.executor.flight")


BatchObserver = Callable[[str, int, float], None]  # (request id, status, seconds) of every batch answered


class BatchHandler(Protocol):
    """What runs a batch: appliance.executor.app.BatchRunner."""

    def run(self, header: dict[str, Any], queries: np.ndarray, gone: Callable[[], bool]
            ) -> tuple[np.ndarray, np.ndarray, Any]: ...


class TokenCheck(flight.ServerMiddlewareFactory):
    """Every call carries the internal token; a call without it, or with another, is refused."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token.encode()

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
        supplied = (headers.get(INTERNAL_TOKEN_HEADER) or [""])[0]
        if isinstance(supplied, str):
            supplied = supplied.encode()
        if not supplied or not hmac.compare_digest(supplied, self._token):
            raise flight.FlightUnauthenticatedError(f"missing or invalid {INTERNAL_TOKEN_HEADER}")
        return None


class SearchServer(flight.FlightServerBase):
    """DoExchange streams of task batches; nothing else."""

    def __init__(self, location: str, token: str, handler: BatchHandler, drain: DrainState,
                 on_batch: BatchObserver | None = None) -> None:
        super().__init__(location, middleware={"token": TokenCheck(token)})
        self._handler = handler
        self._drain = drain
        self._on_batch = on_batch
        self._closing = False
        self._running = threading.Condition()  # batches being answered by this server
        self._busy = 0

    def do_exchange(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
                    reader: flight.MetadataRecordBatchReader, writer: flight.MetadataRecordBatchWriter) -> None:
        writer.begin(RESULT_SCHEMA)
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return  # the query node closed the stream
            except (flight.FlightError, pa.ArrowException):
                return  # or cancelled it, or its connection broke
            counted = self._begin()
            started = time.perf_counter()
            try:
                batch, meta, status, request_id = self._run(chunk, context.is_cancelled) if counted else (
                    *_error(503, "draining", "this executor is draining; send the batch to another one"), 503, "")
                writer.write_with_metadata(batch, meta)
            except (flight.FlightError, pa.ArrowException):
                return  # nobody waits for this answer any more
            finally:
                if counted:  # once the answer is out, so a drain waits for it
                    self._end()
            if self._on_batch is not None:
                self._on_batch(request_id, status, time.perf_counter() - started)
            if self._closing:
                return  # ends the stream: the query node opens a fresh one, elsewhere if need be

    def _begin(self) -> bool:
        """Count a batch in (drain gate and this server's own count); False: refused, not counted."""
        with self._running:  # a batch either starts before close() looks (and is waited for) or is refused
            if self._closing or not self._drain.enter():
                return False
            self._busy += 1
            return True

    def _end(self) -> None:
        self._drain.leave()
        with self._running:
            self._busy -= 1
            self._running.notify_all()

    def _run(self, chunk: flight.FlightStreamChunk, gone: Callable[[], bool]) -> tuple[pa.RecordBatch, bytes, int, str]:
        """(answer, its metadata, the status it stands for, the request id) of one batch."""
        request_id = ""
        try:
            try:
                header = orjson.loads(chunk.app_metadata.to_pybytes() if chunk.app_metadata is not None else b"")
                if not isinstance(header, dict):
                    raise WireError("its header is not a JSON object")
                request_id = str(header.get(REQUEST_ID_FIELD, ""))[:64]
                if chunk.data is None:
                    raise WireError("it carries no query matrix")
                queries = queries_of(chunk.data)
            except (orjson.JSONDecodeError, WireError, pa.ArrowException) as exc:
                return (*_error(400, "invalid_input", f"malformed task batch: {exc}"), 400, request_id)
            ids, dists, stats = self._handler.run(header, queries, gone)
        except ApplianceError as exc:
            if exc.status >= 500 and exc.status not in (503, 504):
                flight_log.error("%s on a Flight batch (request %s): %s %s", exc.code, request_id, exc.message,
                          exc.detail or "", exc_info=exc)
            return (*_error(exc.status, exc.code, exc.message, exc.detail), exc.status, request_id)
        except OSError as exc:
            # Lance and pyarrow raise OSError for an unreachable store: the batch was fine, the storage is not
            flight_log.exception("storage unavailable on a Flight batch (request %s)", request_id)
            return (*_error(503, "storage_unavailable", "storage unavailable", str(exc)[:500]), 503, request_id)
        except Exception as exc:
            flight_log.exception("unhandled error on a Flight batch (request %s)", request_id)
            return (*_error(500, "internal", "internal error", str(exc)[:500]), 500, request_id)
        stats_doc = {"tasks": stats.tasks, "rows_scanned": stats.rows_scanned, "seconds": stats.seconds,
                     "short": stats.short}
        return result_batch(ids, dists), answer_metadata(stats_doc, stats.payload), 200, request_id

    def close(self, grace: float) -> bool:
        """Refuse new batches, let those running finish (up to `grace` seconds), then shut down. False when
        open streams hold the shutdown (the query nodes keep idle ones): the caller's process must exit."""
        with self._running:
            self._closing = True
            self._running.wait_for(lambda: self._busy == 0, timeout=grace)
        done = threading.Thread(target=self.shutdown, name="flight-shutdown", daemon=True)
        done.start()
        done.join(0.5)
        return not done.is_alive()


def _error(status: int, code: str, message: str, detail: str | None = None) -> tuple[pa.RecordBatch, bytes]:
    doc: dict[str, object] = {"status": status, "code": code, "error": message}
    if detail:
        doc["detail"] = detail
    return EMPTY_RESULT, orjson.dumps(doc)


def start_flight_server(host: str, port: int, token: str, handler: BatchHandler, drain: DrainState,
                        on_batch: BatchObserver | None = None) -> SearchServer:
    """Serve task batches on grpc+tcp://host:port in this process (a gunicorn worker) until it exits;
    `on_batch` hears of every batch answered (metrics, the access log)."""
    server = SearchServer(f"grpc+tcp://{bind_address(host, port)}", token, handler, drain, on_batch)
    # Serving since the constructor returned. Not `server.serve()`: pyarrow's serve() takes over SIGTERM and
    # SIGINT while it blocks, and re-raises them only once gRPC's shutdown ends, which the streams the query
    # nodes keep open hold forever: gunicorn's worker never hears its SIGTERM, and its master kills it when
    # graceful_timeout is up (a drained executor's stop took 10 s, and the exit below never ran).
    flight_log.info("serving task batches over Arrow Flight on %s:%d", host, server.port)

    def stop() -> None:
        if not server.close(EXIT_GRACE_SECONDS):
            # gRPC waits for every open stream to end, and the query nodes keep theirs open: leave now
            # (atexit handlers run last-registered first, so only those registered before this one are
            # skipped; the logs are flushed here).
            logging.shutdown()
            os._exit(0)

    atexit.register(stop)
    return server
