"""The query node's work, independent of any HTTP front: tables, writes and searches.

The fronts create, list and drop tables through the `QueryService`, and work on one table through the
`Table` handle that `QueryService.table(name, version)` hands out (its section, below): its reads, its
writes, and `Table.search`, the one search entry point of both fronts. Concurrent searches of one shape
run as one batch through the `Coalescer` (cross-request batching, the last section of this module), then
are planned and run on the executors by the service.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa

import kernels
from appliance import limits
from appliance.deadline import Deadline
from appliance.errors import Unavailable
from appliance.events.event import APPENDED, DELETED, INDEX_REQUESTED, OPTIMIZE, OPTIMIZE_REQUESTED, REBUILD
from appliance.events.publisher import Publisher
from appliance.events.status import IndexerStatus
from appliance.index.builder import Progress, build_full
from appliance.index.manifest import IndexManifest
from appliance.index.params import IndexParams
from appliance.planner.plan import Routing, SearchPlan, SnapshotStats, estimate_selectivity, plan_search, snapshot_stats
from appliance.query.catalog import IndexCatalog
from appliance.query.commits import GroupCommitter
from appliance.query.dispatch import Dispatcher, Found, replace_rows
from appliance.query.recall import RecallMonitor
from appliance.query.request import SearchRequest, validate
from appliance.storage.tables import TableInfo, TableSnapshot, TableStore
from kernels.threads import thread_budget

WIDEN_ATTEMPTS = 3
GROUP_COMMIT_ROWS = 262_144
"""Most rows one group commit round appends (a single larger request still commits alone)."""
COMMIT_RETRY_SECONDS = 20.0
"""How long a write lost to other writers (other query nodes, compaction) is retried before 409/503."""
Queued = tuple[SearchRequest, str, Deadline | None, TableSnapshot | None]
"""A search waiting for its batch: request, request id, deadline, and the version it pinned (None: latest)."""


@dataclass(frozen=True, eq=False)
class SearchResult:
    """Results of one search: per query, rows best first, each with `_rowid`, `_distance` and payload.

    Kept as columns (numpy arrays, and the payload columns as the Arrow table the executors answered) and
    turned into what the caller asks for: `per_query` builds the JSON answer's rows straight from them,
    `rows` (an Arrow table) adds the payload's Arrow columns to the ids and distances without converting
    them (an Arrow answer, the LanceDB front)."""

    table: str
    version: int
    plan: SearchPlan
    query_index: np.ndarray  # int32 per result row, ascending (rows are ordered by query, best first)
    row_ids: np.ndarray  # uint64 per result row
    distances: np.ndarray  # float32 per result row
    payload: pa.Table  # the selected columns, one row per result row (no column selected: no column)

    @functools.cached_property
    def rows(self) -> pa.Table:
        """query_index, _rowid, _distance, then the selected columns."""
        arrays: dict[str, Any] = {
            "query_index": pa.array(self.query_index, pa.int32()),
            "_rowid": pa.array(self.row_ids, pa.uint64()),
            "_distance": pa.array(self.distances, pa.float32()),
        }
        table = pa.table(arrays)
        for field, column in zip(self.payload.schema, self.payload.columns, strict=True):
            table = table.append_column(field, column)
        return table

    def per_query(self, nq: int) -> list[list[dict[str, Any]]]:
        grouped: list[list[dict[str, Any]]] = [[] for _ in range(nq)]
        names = ("_rowid", "_distance", *self.payload.column_names)
        values = zip(self.row_ids.tolist(), self.distances.tolist(), *(c.to_pylist() for c in self.payload.columns),
                     strict=True)
        for query, row in zip(self.query_index.tolist(), values, strict=True):
            grouped[query].append(dict(zip(names, row, strict=True)))
        return grouped

    def split(self, sizes: list[int]) -> list[SearchResult]:
        """The results of consecutive groups of queries (`sizes` queries each), numbered from 0 in each."""
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        starts = np.searchsorted(self.query_index, bounds)
        parts = []
        for i in range(len(sizes)):
            lo, hi = int(starts[i]), int(starts[i + 1])
            parts.append(dataclasses.replace(
                self, query_index=(self.query_index[lo:hi] - bounds[i]).astype(np.int32),
                row_ids=self.row_ids[lo:hi], distances=self.distances[lo:hi],
                payload=self.payload.slice(lo, hi - lo) if self.payload.num_columns else self.payload))
        return parts


class QueryService:
    def __init__(self, store: TableStore, dispatcher: Dispatcher, catalog: IndexCatalog,
                 prefilter_threshold: float = 0.05, batch_rows: int = 0, batches_inflight: int = 1) -> None:
        """`batch_rows` > 0 batches concurrent searches of the same shape, up to that many query vectors,
        with at most `batches_inflight` batches of one shape running at a time (the Coalescer, below)."""
        self.store = store
        self.dispatcher = dispatcher
        self.catalog = catalog
        self.prefilter_threshold = prefilter_threshold
        self.coalescer: Coalescer[Queued, SearchResult] | None = (
            Coalescer(self._search_batch, batch_rows, batches_inflight) if batch_rows > 0 else None)
        self.commits = GroupCommitter(self._commit_appends, GROUP_COMMIT_ROWS, COMMIT_RETRY_SECONDS,
                                      on_commit=store.written)

    def create_table(self, name: str, dimension: int, metric: str, payload: Any) -> TableInfo:
        try:
            return self.store.create(name, dimension, metric, payload)
        finally:  # writes outside group commit tell the search version cache themselves (commits.py does)
            self.store.written(name)

    def list_tables(self) -> list[str]:
        return self.store.list()

    def drop(self, name: str) -> None:
        try:
            self.store.drop(name)
        finally:
            self.store.written(name)
        self.catalog.indexes.drop(name)
        self.catalog.forget(name)

    def _commit_appends(self, name: str, parts: list[pa.Table]) -> int:
        """One group commit round of appends: one version, one event."""
        version = self.store.append_parts(name, parts)
        self._announce(name, APPENDED, version)
        return version

    def table(self, name: str, version: int | None = None) -> Table:
        """Table `name` at `version` (None: the latest), for reads, writes and searches (Table, below).
        Nothing is opened yet: a missing table fails at the handle's first use."""
        return Table(self, name, version)

    @property
    def search_timeout(self) -> float:
        """Seconds a search may take when its client sets no deadline."""
        return self.dispatcher.search_timeout

    # --- searches: batched across requests (the Coalescer), then planned and run on the executors ----------

    def _search(self, request: SearchRequest, request_id: str, deadline: Deadline | None,
                snapshot: TableSnapshot | None) -> SearchResult:
        """Table.search: a search of the version `snapshot` pins (None: the latest, pinned by its batch when
        the batch runs). Concurrent searches of one shape run as one batch when batching is on."""
        if self.coalescer is None:
            return self._search_now(request, request_id, deadline, snapshot)
        return self.coalescer.submit(request.shape(), (request, request_id, deadline, snapshot),
                                     rows=len(request.queries))

    def _search_batch(self, _shape: object, members: list[Queued]) -> list[SearchResult]:
        """One search for the stacked queries of `members`, split back into one result per member; it runs
        until the latest member's deadline, and stops early only when every member's client is gone. Its
        members share a shape, version included: a search of an explicit version brings its pinned snapshot,
        one of the latest pins it here, now that every member has arrived (read-your-writes)."""
        request, request_id, _, snapshot = members[0]
        if len(members) > 1:
            request = dataclasses.replace(request, queries=np.concatenate([m[0].queries for m in members]))
        deadlines = [m[2] or Deadline.after(self.dispatcher.search_timeout) for m in members]
        result = self._search_now(request, request_id, Deadline.latest(deadlines), snapshot)
        return result.split([len(m[0].queries) for m in members]) if len(members) > 1 else [result]

    def _search_now(self, request: SearchRequest, request_id: str, deadline: Deadline | None = None,
                    snapshot: TableSnapshot | None = None) -> SearchResult:
        snapshot, stats, request = self._bind(request, snapshot)
        plan, answer = self._execute(snapshot, stats, request, request_id, deadline, list(request.columns or ()))
        if self.recall_monitor is not None and plan.uses_index:  # only queues a sample (query/recall.py)
            self.recall_monitor.offer(request.table, request, answer.ids, plan.index_version, plan.target_recall,
                                      plan.breadth)
        found = answer.ids != kernels.NO_ID
        return SearchResult(snapshot.name, snapshot.version, plan, np.nonzero(found)[0].astype(np.int32),
                            answer.ids[found].astype(np.uint64), answer.distances[found].astype(np.float32),
                            answer.payload if answer.payload is not None else pa.table({}))

    routing = Routing()  # how plans group tasks for routing; app.py sets it from the settings
    recall_monitor: RecallMonitor | None = None  # app.py sets it from the settings
    build_threads: int | None = None  # app.py sets it from the settings; None: builds keep the process's threads

    def _bind(self, request: SearchRequest, snapshot: TableSnapshot | None = None
              ) -> tuple[TableSnapshot, SnapshotStats, SearchRequest]:
        """Pin the request's version unless `snapshot` is it (a warm latest one makes no storage call,
        tables.py), take its statistics (gathered once per version) and validate the request against them:
        the only check of a request against its table."""
        snapshot = snapshot or self.store.snapshot(request.table, request.version, cached=True)
        latest = request.version is None or request.version == snapshot.dataset.latest_version
        stats = snapshot_stats(snapshot)
        return snapshot, stats, validate(request, snapshot, stats, latest)

    def _plan(self, snapshot: TableSnapshot, stats: SnapshotStats, request: SearchRequest) -> SearchPlan:
        """The inputs of the (pure) planner: the table's current index, for a filtered search that may use
        it the filter's estimated selectivity, and the search breadth the recall monitor set for the index."""
        index = None if request.bypass_index else self.catalog.current(stats.table)
        selectivity = None
        if index is not None and request.filter is not None:
            selectivity = estimate_selectivity(snapshot, stats, request.filter)
        breadth = 1.0  # raised while the recall monitor measures this index below its target (query/recall.py)
        if index is not None and self.recall_monitor is not None:
            breadth = self.recall_monitor.breadth(stats.table, index.manifest.index_version)
        plan = plan_search(request, stats, index, selectivity, self.prefilter_threshold, self.routing, breadth)
        if plan.uses_index:  # the index's own refine_factor counts when the request names none (per query
            limits.check_candidates(plan.k, plan.refine_factor)  # vector: batching stacks requests' queries)
        return plan

    def _execute(self, snapshot: TableSnapshot, stats: SnapshotStats, request: SearchRequest, request_id: str,
                 deadline: Deadline | None = None, columns: list[str] | None = None) -> tuple[SearchPlan, Found]:
        """Run the plan: the executors finish their candidates (deleted rows dropped, post-filter, refine)
        and return their top k with the payload `columns`. The queries of an IVF plan that came up short
        while an executor's candidates were full are searched again, alone, wider (4x and 16x the candidates),
        and finally exactly, so deletions and post-filters never cost results that exist; the batch's other
        queries keep their answers, as they would have alone. One deadline covers them all. Returns the
        last plan run with the answer."""
        deadline = deadline or Deadline.after(self.dispatcher.search_timeout)
        columns = columns or []
        plan = self._plan(snapshot, stats, request)
        answer = self._dispatch(snapshot, plan, request, request_id, deadline, columns)
        fetch_k = plan.fetch_k
        for attempt in range(1, WIDEN_ATTEMPTS + 1):
            short = np.flatnonzero(answer.short)
            if not plan.uses_index or not len(short):
                break
            again = dataclasses.replace(request, queries=request.queries[short])
            if attempt < WIDEN_ATTEMPTS:
                fetch_k *= 4
                plan = dataclasses.replace(self._plan(snapshot, stats, again), fetch_k=fetch_k)
            else:
                plan = self._plan(snapshot, stats, dataclasses.replace(again, bypass_index=True))
            answer = replace_rows(answer, short, self._dispatch(snapshot, plan, again, request_id, deadline, columns))
        return plan, answer

    def _dispatch(self, snapshot: TableSnapshot, plan: SearchPlan, request: SearchRequest, request_id: str,
                  deadline: Deadline, columns: list[str]) -> Found:
        # the table's schema types the columns of a plan with no task (an empty table); read only then
        schema = None if plan.tasks else snapshot.dataset.schema
        return self.dispatcher.search(plan, request.queries, request_id, deadline, columns, schema)

    # --- used by the LanceDB-compatible front (appliance/query/lancedb/) ---------------------------------

    def create_table_from_arrow(self, name: str, schema: pa.Schema, data: pa.Table | None,
                                mode: str = "create", metric: str = "l2") -> TableInfo:
        """Create (or with mode=overwrite replace) a table from an Arrow schema and rows. Replacing a table
        drops its IVF index: the index describes rows that no longer exist."""
        def create() -> TableInfo:
            existed = mode == "overwrite" and name in self.store.list()
            try:
                info = self.store.create_from_arrow(name, schema, data, metric, mode)
            finally:
                self.store.written(name)
            if existed:
                self.table(name).drop_index()
            if info.rows:
                self._announce(name, APPENDED, info.version)
            return info

        return self.commits.run(name, create) if mode == "overwrite" else create()

    # --- the indexer fleet: events out, index stats in (appliance/events/, appliance/indexer/) ------------

    events: Publisher | None = None  # set by attach_events; without it nothing is published
    indexer_status: IndexerStatus | None = None
    indexer_stale_after: float = 180.0

    def attach_events(self, publisher: Publisher, status: IndexerStatus | None = None,
                      stale_after: float = 180.0) -> None:
        """Publish an event on every committed write and explicit request, and report indexer state."""
        self.events = publisher
        self.indexer_status = status
        self.indexer_stale_after = stale_after

    def _announce(self, name: str, kind: str, version: int) -> None:
        """Tell the indexers a write committed; called only after the commit, never fails the write."""
        if self.events is not None:
            self.events.announce(name, kind, version)


# ---- Table handles -----------------------------------------------------------------------------------------
# `QueryService.table(name, version)` hands out a `Table` bound to a version of the table (the latest when
# none is named), as a lancedb `Table` is; the fronts resolve one per request and work through it.
#
# A handle reads one snapshot: the first read pins it (opening the version; its statistics are gathered
# once per version), and every later read through the handle (describe, count_rows, versions, explain,
# index status, a LanceDB scan) reuses it, so the reads of one request agree with each other and open
# storage once. Making a handle touches no storage: a table that does not exist fails (404) at its first
# use, where the request first reads or writes it.
#
# Writes are methods of the handle too. Each commits to the latest version, whatever version the handle
# reads (group commit, query/commits.py), and then drops the handle's pinned snapshot, so a later read
# through it sees the write.
#
# A search is the exception to pinning. A search of the latest version pins nothing when the handle is
# made: it joins a batch (the Coalescer, below), which pins the latest version only once its members are
# fixed, so a search sees every write acknowledged before it was submitted (read-your-writes). A search of
# an explicit version reads that version: through the handle's pin when it holds one, else its batch opens
# it, once for all the batch's searches of that version (the version is part of a batch's shape).

Write = TypeVar("Write", bound=Callable[..., Any])


def _write(method: Write) -> Write:
    """A write through the handle: afterwards (committed or not) the handle reads the table again."""

    @functools.wraps(method)
    def wrapper(self: Table, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._snapshot = None
    return wrapper  # type: ignore[return-value]


class Table:
    """Table `name` at `version` (None: the latest) on this query node (see "Table handles", above)."""

    def __init__(self, service: QueryService, name: str, version: int | None = None) -> None:
        self.service = service
        self.name = name
        self.version = version
        self._snapshot: TableSnapshot | None = None

    def at(self, version: int | None) -> Table:
        """The same table bound to another version."""
        return Table(self.service, self.name, version)

    # --- reads: the pinned snapshot --------------------------------------------------------------------

    @property
    def snapshot(self) -> TableSnapshot:
        """The version this handle reads, pinned by its first read: opened from storage, or, when that read
        was an explain or exact_ids, the latest version searches use (`_bind`)."""
        if self._snapshot is None:
            self._snapshot = self.service.store.snapshot(self.name, self.version)
        return self._snapshot

    def _bind(self, request: SearchRequest) -> tuple[TableSnapshot, SnapshotStats, SearchRequest]:
        """`request` bound to this handle's snapshot: its statistics, and the request validated against
        them. A latest handle not pinned yet pins the latest version searches use (no storage call when
        warm: storage/tables.py)."""
        if self._snapshot is None:
            self._snapshot = self.service.store.snapshot(self.name, self.version, cached=True)
        return self.service._bind(self._own(request), self._snapshot)

    def _own(self, request: SearchRequest) -> SearchRequest:
        return dataclasses.replace(request, table=self.name, version=self.version)

    def describe(self) -> TableInfo:
        return self.snapshot.info()

    def count_rows(self, predicate: str | None = None) -> int:
        return self.snapshot.count_rows(predicate)

    def versions(self) -> list[dict[str, Any]]:
        """Every version of the table: number, commit time and Lance's metadata (row counts)."""
        return self.snapshot.dataset.versions()

    def search(self, request: SearchRequest, request_id: str = "", deadline: Deadline | None = None
               ) -> SearchResult:
        """The one search entry point of both fronts: validate the request against the version searched,
        plan, run the plan on the executors, and fetch the payload columns from that version. At the
        latest version it pins nothing here: the search's batch pins the version when it runs (see "Table
        handles", above); at an explicit version it reads the handle's pin, if it holds one, else the batch
        opens that version. `deadline` (default: the service's search_timeout) stops the plan's work
        everywhere when it passes."""
        pinned = None if self.version is None else self._snapshot
        return self.service._search(self._own(request), request_id, deadline, pinned)

    def explain(self, request: SearchRequest) -> SearchPlan:
        """The plan a search of `request` runs now (the same binding and planning as `search`), with the
        executors its routing keys go to now (None when none is live)."""
        snapshot, stats, request = self._bind(request)
        plan = self.service._plan(snapshot, stats, request)
        try:
            assignment = self.service.dispatcher.assignment(plan)
        except Unavailable:
            return plan
        return dataclasses.replace(plan, assignment={
            node: sorted({t.key for t in tasks}) for node, tasks in sorted(assignment.items())})

    def exact_ids(self, request: SearchRequest) -> np.ndarray:
        """The ids [nq, k] of a search run exactly (the recall monitor's reference answer)."""
        snapshot, stats, request = self._bind(dataclasses.replace(request, bypass_index=True))
        return self.service._execute(snapshot, stats, request, "recall-monitor")[1].ids

    def index_version(self) -> int | None:
        """The version of the table's published IVF index (None: none)."""
        return self.service.catalog.indexes.current_version(self.name)

    def index_status(self) -> dict[str, Any]:
        """The published index and how many rows of the pinned version it does not cover yet."""
        dataset = self.snapshot.dataset
        rows = dataset.count_rows()
        manifest = self.service.catalog.indexes.current(self.name)
        if manifest is None:
            return {"table": self.name, "index": None, "indexed_rows": 0, "unindexed_rows": rows}
        unindexed = dataset.count_rows(f"_rowid >= {manifest.row_id_watermark}")
        monitor = self.service.recall_monitor
        return {"table": self.name, "index": manifest.describe(), "indexed_rows": rows - unindexed,
                "unindexed_rows": unindexed, "recall_monitor": monitor.describe(self.name) if monitor else None}

    def index_stats(self) -> dict[str, Any]:
        """`index_status` plus what the indexer fleet is doing: index version, last build, indexer state."""
        stats = self.index_status()
        index = stats.get("index") or {}
        stats["index_version"] = index.get("index_version")
        stats["last_build_time"] = (index["created_at"] + index["build_seconds"]) if index else None
        service = self.service
        if service.indexer_status is not None:
            stats["indexer"] = service.indexer_status.describe(self.name, service.indexer_stale_after)
        queue = service.events.stats() if service.events is not None else None
        stats["events"] = queue.to_json() if queue is not None else None
        return stats

    # --- writes: each commits to the latest version, then the handle reads again ---------------------------

    @_write
    def insert(self, data: pa.Table | list[Any]) -> int:
        """Commit rows and return the committed version; the caller acknowledges only after this returns.
        The rows are checked against the table's schema first, then committed together with the table's
        other concurrent inserts, in one version (group commit, commits.py)."""
        service = self.service
        return service.commits.append(self.name, service.store.conform_rows(self.name, data))

    @_write
    def delete(self, predicate: str) -> tuple[int, int]:
        def delete() -> tuple[int, int]:
            version, deleted = self.service.store.delete(self.name, predicate)
            if deleted:
                self.service._announce(self.name, DELETED, version)
            return version, deleted

        return self.service.commits.run(self.name, delete)

    @_write
    def update(self, predicate: str | None, updates: dict[str, str]) -> tuple[int, int]:
        """SQL updates of payload columns; row ids and vectors stay, so the index stays valid."""
        return self.service.commits.run(self.name, lambda: self.service.store.update(self.name, predicate, updates))

    @_write
    def merge_insert(self, on: str, data: pa.Table, **when: Any) -> dict[str, int]:
        """Upsert by key. Updated rows keep their stable row ids but may carry new vectors, which an index
        built before would still file under their old partition, so an update drops the index."""
        def merge() -> dict[str, int]:
            result = self.service.store.merge_insert(self.name, on, data, **when)
            if result["num_updated_rows"]:
                self.drop_index()
            if result["num_updated_rows"] or result["num_inserted_rows"]:
                self.service._announce(self.name, APPENDED, result["version"])
            elif result["num_deleted_rows"]:
                self.service._announce(self.name, DELETED, result["version"])
            return result

        return self.service.commits.run(self.name, merge)

    @_write
    def overwrite(self, data: pa.Table) -> int:
        """Replace every row of the table; the IVF index goes with the old rows (see drop_index)."""
        return self._replace_rows(lambda: self.service.store.overwrite(self.name, data))

    @_write
    def restore(self, version: int) -> int:
        """Bring an old version back as the latest; rows deleted since come back under ids the index
        already passed, so the index is dropped."""
        return self._replace_rows(lambda: self.service.store.restore(self.name, version))

    def _replace_rows(self, commit: Callable[[], int]) -> int:
        """Commit a write that replaces rows the index covers (in the table's commit order), drop the index
        and tell the indexers; the new version."""
        def replace() -> int:
            version = commit()
            self.drop_index()
            self.service._announce(self.name, APPENDED, version)
            return version

        return self.service.commits.run(self.name, replace)

    @_write
    def add_columns(self, expressions: dict[str, str]) -> int:
        """Schema evolution touches payload columns only: row ids and vectors, hence the index, stay valid."""
        return self.service.commits.run(self.name, lambda: self.service.store.add_columns(self.name, expressions))

    @_write
    def alter_columns(self, alterations: list[dict[str, Any]]) -> int:
        return self.service.commits.run(self.name, lambda: self.service.store.alter_columns(self.name, alterations))

    @_write
    def drop_columns(self, columns: list[str]) -> int:
        return self.service.commits.run(self.name, lambda: self.service.store.drop_columns(self.name, columns))

    @_write
    def build_index(self, params: IndexParams, metric: str | None = None,
                    progress: Progress | None = None) -> IndexManifest:
        """Build and publish a full index version now (the indexer fleet does this in the background).

        The build claims the table, so the indexers leave its index alone meanwhile, and its parameters
        become the table's choice, which the indexers' rebuilds keep. It is the one served even when an
        indexer's build published first; Conflict (409) when the table's rows were replaced meanwhile
        (overwrite, restore, an updating merge_insert). The indexers are told afterwards, to index what
        was written while it ran."""
        service = self.service
        indexes = service.catalog.indexes
        threads = nullcontext() if service.build_threads is None else thread_budget(service.build_threads)
        with indexes.explicit_build(self.name), threads:
            manifest = build_full(service.store, indexes, self.name, params, progress, metric,
                                  requested={"params": params.to_json(), "metric": metric}, rebase=True)
        service.catalog.forget(self.name)
        service._announce(self.name, APPENDED, service.store.snapshot(self.name).version)
        return manifest

    @_write
    def drop_index(self, forget_choice: bool = False) -> bool:
        """Unpublish the table's IVF index, and stop planning with it at once. Called whenever rows the index
        covers change in place (overwrite, restore, vector updates): its row-id watermark would otherwise
        claim rows it holds stale vectors for. It starts a new generation of the table's index, so a
        build that began before cannot publish after it (index/store.py). The user's chosen parameters
        stay for the rebuild unless `forget_choice` (the user dropped the index). Returns whether there
        was one."""
        had = self.service.catalog.indexes.new_generation(self.name, forget_choice).version is not None
        self.service.catalog.forget(self.name)
        return had

    # --- requests to the indexer fleet (events out, appliance/events/) ---------------------------------------

    def request_index(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask the indexers for a full build (in the background); the request's event, as JSON."""
        if params:
            IndexParams.from_json(dict(params))  # reject bad parameters now, not in the indexer
        return self._request(INDEX_REQUESTED, REBUILD, params)

    def request_optimize(self) -> dict[str, Any]:
        """Ask the indexers to index new rows, compact small fragments and clean up old versions now."""
        return self._request(OPTIMIZE_REQUESTED, OPTIMIZE, None)

    def _request(self, kind: str, action: str, params: dict[str, Any] | None) -> dict[str, Any]:
        events = self.service.events
        if events is None:
            raise Unavailable("this query node has no event queue; background index requests are off")
        version = self.service.store.snapshot(self.name).version  # the latest, whatever this handle reads
        event = events.request(self.name, kind, version, action, params)
        return {"table": self.name, "event": event.id, "kind": kind, "action": action, "table_version": version}


# ---- Cross-request batching (the Coalescer) --------------------------------------------------------------
# Concurrent searches that differ only in their query vectors run as one batch.
#
# Every search pays a fixed price on the query node and per executor (snapshot, plan, one HTTP hop per
# executor, the payload read) that does not grow with the number of query vectors, and the executors scan a
# partition probed by several queries with one matrix product. So under load the query node gathers the
# searches that arrive while earlier ones are running into one batch and runs it once.
#
# No request waits for company: one that finds fewer than `max_inflight` batches of its kind running leads a
# batch of its own at once, so a lone client sees no added latency. Requests arriving while the limit is
# reached queue; whenever a batch finishes, the queue (up to `max_rows` query vectors) becomes the next batch,
# led by its first request's thread. Each batch pins its table version only once its members are fixed, after
# every member arrived, so read-your-writes holds for every member.

Item = TypeVar("Item")
Result = TypeVar("Result")
RunBatch = Callable[[Hashable, list[Item]], list[Result]]  # (key, items) -> one result per item, in order


@dataclass
class _Member(Generic[Item, Result]):
    item: Item
    rows: int
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    batch: list[_Member[Item, Result]] | None = None  # set on the member chosen to lead a queued batch
    result: Result | None = None
    error: BaseException | None = None


@dataclass
class _Kind(Generic[Item, Result]):
    running: int = 0
    queue: list[_Member[Item, Result]] = dataclasses.field(default_factory=list)


class Coalescer(Generic[Item, Result]):
    """Runs `run_batch(key, items)` for items submitted concurrently under equal keys."""

    def __init__(self, run_batch: RunBatch, max_rows: int, max_inflight: int = 1) -> None:
        if max_rows < 1 or max_inflight < 1:
            raise ValueError("max_rows and max_inflight must be >= 1")
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._max_inflight = max_inflight
        self._kinds: dict[Hashable, _Kind[Item, Result]] = {}
        self._lock = threading.Lock()
        self.batches = 0  # batches run, and the items they held: the mean batch size, for /metrics
        self.items = 0

    def submit(self, key: Hashable, item: Item, rows: int = 1) -> Result:
        """`item`'s result, computed in a batch with whatever else of equal key is queued; raises what the
        batch raised. `rows` is the item's share of `max_rows` (its number of query vectors)."""
        me: _Member[Item, Result] = _Member(item, rows)
        with self._lock:
            kind = self._kinds.setdefault(key, _Kind())
            if kind.running < self._max_inflight and not kind.queue:
                kind.running += 1
                me.batch = [me]
            else:
                kind.queue.append(me)
        if me.batch is None:
            me.ready.wait()
        if me.batch is not None:  # leading: run it, then hand the queue to the next leader
            self._lead(key, me.batch)
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _lead(self, key: Hashable, batch: list[_Member[Item, Result]]) -> None:
        try:
            results = self._run_batch(key, [m.item for m in batch])
            for member, result in zip(batch, results, strict=True):
                member.result = result
        except BaseException as exc:  # noqa: BLE001 - every member gets it, not just this thread
            for member in batch:
                member.error = exc  # the same instance: a copy could not be made of every exception type
        finally:
            nxt = self._finish(key, len(batch))
            for member in batch[1:]:
                member.ready.set()
            if nxt:
                nxt[0].batch = nxt
                nxt[0].ready.set()

    def _finish(self, key: Hashable, size: int) -> list[_Member[Item, Result]]:
        """Count a batch done and take the next one off the queue (it is counted running at once)."""
        with self._lock:
            kind = self._kinds[key]
            kind.running -= 1
            self.batches += 1
            self.items += size
            nxt: list[_Member[Item, Result]] = []
            rows = 0
            while kind.queue and (not nxt or rows + kind.queue[0].rows <= self._max_rows):
                member = kind.queue.pop(0)
                nxt.append(member)
                rows += member.rows
            if nxt:
                kind.running += 1
            elif not kind.running:
                del self._kinds[key]
            return nxt
