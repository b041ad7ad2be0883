"""The planner: statistics in, a plan out, and the plan's wire form.

Three sections, in the order a search uses them: a table version's statistics (`SnapshotStats`, gathered
once per version, and the filter's selectivity estimate); the planner, a pure function of (validated
request, snapshot statistics, index) -> plan, and how a plan's tasks are grouped for routing (it reads
nothing from storage: what it knows of the table comes from `SnapshotStats`, and the filter's selectivity
is an estimate passed in); and the wire format a plan's task batches and their answers travel in between
query node and executor (`Finish`, `queries_batch`, `answer_metadata`, ...), which executors import too.

Routing works on *groups*, not single tasks: a table's IVF partitions are cut into groups of consecutive
partitions whose index objects add up to at most `partition_group_bytes`, and its fragments likewise, and
every task carries its group's key. Tasks of one key meet one executor (and its cache), so a small table
lives whole on one executor and a large one spreads over the ring. A plan whose work (bytes scanned,
counted once per query) is under `fanout_min_bytes` sends every task under the key of its largest group:
one executor, one hop. Groups come from the manifest and the fragments' row counts alone (no I/O), so every
query node computes the same keys.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import xxhash

import kernels
from appliance import limits
from appliance.cache.codec import ARROW
from appliance.config import Settings
from appliance.index.codec import GRAPH_CODECS
from appliance.index.manifest import IndexManifest
from appliance.index.params import default_ef
from appliance.lru import Lru
from appliance.query.catalog import LoadedIndex
from appliance.query.request import SearchRequest
from appliance.routing.ring import replica_key
from appliance.storage import lance_errors
from appliance.storage.frames import FrameError as WireError
from appliance.storage.frames import decode as decode  # the wire's frames (HTTP transport): callers import them here
from appliance.storage.frames import encode as encode
from appliance.storage.tables import TableSnapshot

# ---- Statistics in: what the planner knows of a pinned table version -------------------------------------
# Gathered once per snapshot.
#
# `SnapshotStats` is everything a plan needs from the table (schema facts, per fragment its rows and row-id
# span, the live row count), read once per (table, version) and kept immutable, so that planning itself
# (`plan_search`) is a pure function without storage I/O. `estimate_selectivity` is the one statistic
# that depends on a filter: the share of rows matching it, counted (not materialised) on a sample of the
# version's fragments, once per (version, filter).

SELECTIVITY_SAMPLE_ROWS = 65_536
"""Rows of a version a selectivity estimate counts a filter on (whole fragments, spread over the table);
a table this small or smaller is counted whole, so the estimate is exact."""

_STATS: Lru[SnapshotStats] = Lru(256)
_SELECTIVITY: Lru[float] = Lru(1024)
_OF_SNAPSHOT: weakref.WeakKeyDictionary[TableSnapshot, SnapshotStats] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FragmentStats:
    """One fragment of the version: its id, physical rows (deleted ones included: what a scan reads) and
    the smallest and largest live row id ((0, -1) when none is alive)."""

    fragment_id: int
    rows: int
    first_row_id: int
    last_row_id: int


@dataclass(frozen=True)
class SnapshotStats:
    """The facts of one table version that validation and planning use (no handle to storage)."""

    table: str
    version: int
    dimension: int
    metric: str  # the table's own metric (schema metadata)
    columns: tuple[str, ...]  # every column, the vector included
    payload_columns: tuple[str, ...]  # every column but the vector
    fragments: tuple[FragmentStats, ...]  # in fragment id order
    live_rows: int
    identity: str | None = None  # the version's manifest digest (TableSnapshot.identity): what memos key on

    def key(self, uri: str, *more: object) -> tuple[object, ...]:
        """A memo key for something true of this version of the table at `uri` (and `more`)."""
        return (uri, self.version, self.identity, *more)

    @property
    def vector_bytes(self) -> int:
        """Bytes of one row's vector (float32)."""
        return self.dimension * 4

    def rows_from(self, watermark: int) -> dict[int, int]:
        """Per fragment holding rows with ids at or past `watermark` (the rows an index lacks), at most how
        many: ids ascend within a fragment, so its span past the watermark bounds them."""
        return {f.fragment_id: f.last_row_id - max(f.first_row_id, watermark) + 1 for f in self.fragments
                if f.last_row_id >= watermark}


def snapshot_stats(snapshot: TableSnapshot) -> SnapshotStats:
    """The statistics of a pinned version, gathered on its first search and remembered for the version
    (keyed by the version's manifest digest as well, so a table dropped and created again under its name
    never meets its predecessor's). A snapshot object searched again (the query node's cached latest
    version) finds them without computing even the digest."""
    known = _OF_SNAPSHOT.get(snapshot)
    if known is not None:
        return known
    identity = snapshot.identity()
    key = (snapshot.dataset.uri, snapshot.version, identity)
    known = _STATS.get(key) if identity else None
    if known is not None:
        _OF_SNAPSHOT[snapshot] = known
        return known
    ranges = snapshot.fragment_row_ranges()  # cached per fragment data file (storage/tables.py)
    fragments = tuple(sorted(
        (FragmentStats(f.fragment_id, f.metadata.physical_rows, *ranges.get(f.fragment_id, (0, -1)))
         for f in snapshot.dataset.get_fragments()), key=lambda f: f.fragment_id))
    schema = snapshot.dataset.schema
    stats = SnapshotStats(table=snapshot.name, version=snapshot.version, dimension=snapshot.dimension,
                          metric=snapshot.metric, columns=tuple(schema.names),
                          payload_columns=tuple(snapshot.payload_columns), fragments=fragments,
                          live_rows=snapshot.dataset.count_rows(), identity=identity)
    if identity:
        _STATS.put(key, stats)
    _OF_SNAPSHOT[snapshot] = stats
    return stats


def sample_fragments(stats: SnapshotStats, rows: int = SELECTIVITY_SAMPLE_ROWS) -> list[int]:
    """Ids of whole fragments, spread evenly over the version, holding at least `rows` rows (all of them
    when the table is no larger)."""
    fragments = [f for f in stats.fragments if f.rows]
    total = sum(f.rows for f in fragments)
    stride = max(1, total // max(1, rows))  # every stride-th fragment first, then the rest, until enough
    chosen: list[int] = []
    taken = 0
    for f in fragments[::stride] + [f for i, f in enumerate(fragments) if i % stride]:
        if taken >= rows:
            break
        chosen.append(f.fragment_id)
        taken += f.rows
    return chosen


def estimate_selectivity(snapshot: TableSnapshot, stats: SnapshotStats, predicate: str) -> float:
    """The share of live rows matching a filter: counted by Lance on a sample of fragments (the whole
    version when small), never materialising the matching row ids; once per (version, filter). A filter
    that fails on the data (a bad regex, a division by zero) is a 400, as everywhere else."""
    key = stats.key(snapshot.dataset.uri, predicate)

    def count() -> float:
        fragments = [f for f in map(snapshot.dataset.get_fragment, sample_fragments(stats, SELECTIVITY_SAMPLE_ROWS))
                     if f is not None]
        live = sum(f.count_rows() for f in fragments)  # from the fragments' metadata
        if not live:
            return 0.0
        with lance_errors.map_lance_errors("the filter"):  # one scan of the sample: 3-4x faster than per fragment
            matching = snapshot.dataset.scanner(filter=predicate, fragments=fragments, columns=[],
                                                with_row_id=True).count_rows()
        return matching / live

    return _SELECTIVITY.get_or_load(key, count)


# ---- The plan: tasks, their routing groups, and plan_search ---------------------------------------------

FRAGMENT = "fragment"
PARTITION = "partition"
_INT32_MAX = int(np.iinfo(np.int32).max)  # the largest partition number on the wire (probes are int32)
_INT64_MAX = int(np.iinfo(np.int64).max)  # the largest table, fragment or index version on the wire



def _setting(name: str) -> Any:
    return Settings.__dataclass_fields__[name].default  # declared once, in config.py, with its reasons


@dataclass(frozen=True)
class Routing:
    """How the planner groups tasks for routing (config.py: `partition_group_bytes`, `fanout_min_bytes`)."""

    partition_group_bytes: int = _setting("partition_group_bytes")
    fanout_min_bytes: int = _setting("fanout_min_bytes")
    group_replicas: int = _setting("group_replicas")

    @classmethod
    def from_settings(cls, settings: Settings) -> Routing:
        return cls(settings.partition_group_bytes, settings.fanout_min_bytes, settings.group_replicas)

    def __post_init__(self) -> None:
        if self.partition_group_bytes < 1:
            raise ValueError(f"partition_group_bytes must be at least 1, got {self.partition_group_bytes}")
        if self.fanout_min_bytes < 0:
            raise ValueError(f"fanout_min_bytes must be non-negative, got {self.fanout_min_bytes}")
        if self.group_replicas < 1:
            raise ValueError(f"group_replicas must be at least 1, got {self.group_replicas}")

    def replica(self, queries: np.ndarray) -> int:
        """Which replica of its groups a search goes to: a hash of its query vectors, so searches spread
        over the replicas and a repeated one meets the same cache."""
        if self.group_replicas == 1:
            return 0
        return xxhash.xxh3_64_intdigest(np.ascontiguousarray(queries).data) % self.group_replicas


@dataclass(frozen=True)
class GroupWork:
    """One routing group a plan touches: its key, how many of the plan's tasks fall in it, and their work."""

    key: str
    tasks: int
    work_bytes: int


@dataclass(frozen=True)
class Task:
    """One unit of executor work. `key` is what routing hashes, so equal keys meet the same cache: the key
    of the task's group (or, when the plan does not fan out, of the plan's largest group), shared by all of
    the plan's tasks of that group; `names` tells what it scans.

    A `fragment` task flat-scans one fragment of the pinned table version; a `partition` task scans IVF
    partitions (each with its deltas) of a published index version: all the partitions of one routing key,
    each for the queries of the batch that probe it (the batch's `probes`, `probes_of`), so a plan has one
    partition task per key however many partitions its queries probe. `queries` (the batch's queries that
    scan every partition of the task; None: as `probes` says, or all) is how a query node older than the
    probe matrix on the wire sent a partition's queries, one partition per task; executors still read it.
    """

    kind: str
    key: str
    table: str
    version: int
    fragment_id: int = -1
    min_row_id: int = 0  # fragment tasks scan only rows with ids >= this (the ones the index lacks)
    index_version: int = -1
    partitions: tuple[int, ...] = ()  # partition tasks: the partitions scanned, ascending
    queries: tuple[int, ...] | None = None  # the batch's queries that scan this task's partitions; None: all
    ef: int = 0  # partition tasks of a graph index: search breadth; 0 = the executor's default_ef(k)

    @property
    def names(self) -> list[str]:
        """What the task scans, each unique within a plan: `T/index/v<N>/partition/<p>` per partition, or
        `T/fragment/<id>`."""
        if self.kind == PARTITION:
            return [partition_key(self.table, self.index_version, p) for p in self.partitions]
        return [fragment_key(self.table, self.fragment_id)]

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"kind": self.kind, "key": self.key, "table": self.table, "version": self.version}
        if self.kind == PARTITION:
            doc["index_version"] = self.index_version
            doc["partitions"] = self.partitions
        else:
            doc["fragment"] = self.fragment_id
            if self.min_row_id:
                doc["min_row_id"] = self.min_row_id
        if self.queries is not None:
            doc["queries"] = self.queries
        if self.ef:
            doc["ef"] = self.ef
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Task:
        """A task of the wire, in either form: `partitions` (a list), or an older query node's single
        `partition` (an int)."""
        try:
            kind = str(doc["kind"])
            if kind not in (FRAGMENT, PARTITION):
                raise ValueError(f"unknown task kind {kind!r}")
            partitions: tuple[int, ...] = ()
            if kind == PARTITION:
                listed = doc.get("partitions")
                if listed is None:
                    listed = [doc["partition"]]
                if not isinstance(listed, list) or not all(type(p) is int and 0 <= p <= _INT32_MAX for p in listed):
                    raise ValueError("partitions must be a list of partition numbers")
                if any(a >= b for a, b in itertools.pairwise(listed)):  # a partition listed twice scans it twice
                    raise ValueError("partitions must be listed in ascending order, each once")
                partitions = tuple(listed)
            queries = doc.get("queries")
            if queries is not None and not (isinstance(queries, list) and all(type(q) is int for q in queries)):
                raise ValueError("queries must be a list of query numbers")
            task = cls(
                kind=kind,
                key=str(doc["key"]),
                table=str(doc["table"]),
                version=int(doc["version"]),  # type: ignore[arg-type]
                fragment_id=int(doc.get("fragment", -1)),  # type: ignore[arg-type]
                min_row_id=int(doc.get("min_row_id", 0)),  # type: ignore[arg-type]
                index_version=int(doc.get("index_version", -1)),  # type: ignore[arg-type]
                partitions=partitions,
                queries=None if queries is None else tuple(queries),
                ef=_ef(doc.get("ef", 0)),
            )
            # what Lance and the index store take (a number out of range was an OverflowError there: a 500)
            for name, value in (("version", task.version), ("fragment", task.fragment_id if kind == FRAGMENT else 0),
                                ("index_version", task.index_version if kind == PARTITION else 0)):
                if not 0 <= value <= _INT64_MAX:
                    raise ValueError(f"{name} must be a number from 0 to {_INT64_MAX}, got {value}")
            return task
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed task: {exc}") from exc


def _ef(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limits.MAX_EF:
        raise ValueError(f"ef must be an integer from 0 to {limits.MAX_EF}, got {value!r}")
    return value


@dataclass(frozen=True)
class SearchPlan:
    """What the query node will do: tasks for the executors, and how they finish their candidates.

    Each executor finds `fetch_k` candidates per query over its tasks, then finishes them (`finishing`):
    drops rows deleted since the index was built (`verify_alive`), applies a post-filter, re-ranks with
    exact vectors when `refine_factor` > 0, and keeps `k`, with their payload columns; the query node
    merges the executors' top k.
    """

    table: str
    version: int
    metric: str
    k: int
    filter: str | None
    strategy: str  # exact | exact-prefilter | ivf | ivf-postfilter
    tasks: list[Task] = field(default_factory=list)
    fetch_k: int = 0
    index_version: int | None = None
    nprobes: int = 0
    ef: int = 0  # graph codecs: the search breadth of each probed partition (0: not a graph index)
    breadth: float = 1.0  # the factor nprobes and ef were raised by (query/recall.py: live recall below target)
    target_recall: float | None = None  # the index's (its build measured the probe floor for it)
    partitions: list[int] = field(default_factory=list)
    refine_factor: int = 0
    postfilter: bool = False
    verify_alive: bool = False  # the index may still hold rows deleted since it was built
    selectivity: float | None = None
    groups: list[GroupWork] = field(default_factory=list)  # routing groups touched, largest work first
    work_bytes: int = 0  # bytes the tasks scan, counted once per query that needs them
    fanout: bool = False  # tasks keep their groups' keys (else all go under the largest group's key)
    replica: int = 0  # which replica of its groups the tasks are keyed to (routing/ring.py replica_key)
    assignment: dict[str, list[str]] | None = None  # executor -> routing keys, filled in by explain
    index_metric: str | None = None  # an exact plan's: the metric of the index it left out for the search's
    # an IVF plan's partitions of each query, [nq, nprobes] (int32): its partition tasks scan each partition
    # for the queries that probe it; it travels in the batch's header (`probes`). None when every query
    # probes every partition (nprobes = nlist), as a batch without `probes` means
    probes: np.ndarray | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def probes_doc(self) -> list[list[int]] | None:
        """`probes` as the header's JSON lists, made once for all the plan's batches (one per executor)."""
        return None if self.probes is None else self.probes.tolist()

    @property
    def executors(self) -> int:
        """Executors the plan goes to: from the assignment when known, else as planned (1 unless it fans
        out; a fanned-out plan goes to at most one executor per group)."""
        if self.assignment is not None:
            return len(self.assignment)
        return len(self.groups) if self.fanout else min(1, len(self.groups))

    @property
    def uses_index(self) -> bool:
        return self.index_version is not None

    def finishing(self, columns: Sequence[str] = ()) -> Finish:
        """How the executors finish this plan's candidates, returning `columns` of the rows they keep."""
        if not self.uses_index:  # exact scans find exact, live, prefiltered rows: k of them
            return Finish(self.k, columns=tuple(columns))
        return Finish(self.k, refine=self.refine_factor > 0, verify=self.verify_alive,
                      postfilter=self.postfilter and self.filter is not None, columns=tuple(columns))

    def explain(self) -> dict[str, object]:
        return {
            "table": self.table,
            "version": self.version,
            "metric": self.metric,
            "k": self.k,
            "fetch_k": self.fetch_k,
            "filter": self.filter,
            "strategy": self.strategy,
            "selectivity": self.selectivity,
            "index_version": self.index_version,
            "nprobes": self.nprobes,
            "ef": self.ef,
            "breadth": self.breadth,
            "target_recall": self.target_recall,
            "partitions_probed": self.partitions,
            "refine_factor": self.refine_factor,
            "tasks": [name for t in self.tasks for name in t.names],
            "work_bytes": self.work_bytes,
            "fanout": self.fanout,
            "replica": self.replica,
            "groups": [{"key": g.key, "tasks": g.tasks, "work_bytes": g.work_bytes} for g in self.groups],
            "executors": self.executors,
            "assignment": self.assignment,
            **({"index_metric": self.index_metric} if self.index_metric else {}),
        }


def fragment_key(table: str, fragment_id: int) -> str:
    """The name of a fragment's task (its routing key is its group's, `fragment_group_key`). It carries no
    version: what the executor reads is pinned by the task's version."""
    return f"{table}/fragment/{fragment_id}"


def partition_key(table: str, index_version: int, partition: int) -> str:
    return f"{table}/index/v{index_version}/partition/{partition}"


def partition_group_key(table: str, index_version: int, group: int) -> str:
    """A partition group's routing key: stable for the life of one index version, new with the next one."""
    return f"{table}/index/v{index_version}/group/{group}"


def fragment_group_key(table: str, group: int) -> str:
    """A fragment group's routing key; like a fragment's, it carries no table version, since appends only
    add fragments after the last group."""
    return f"{table}/fragments/group/{group}"


def group_numbers(sizes: Sequence[int], budget: int) -> list[int]:
    """The group of each member, in order: consecutive members whose sizes add up to at most `budget`; a
    member larger than the budget is a group of its own. Appending members never moves earlier ones."""
    numbers: list[int] = []
    group, used = 0, 0
    for size in sizes:
        if numbers and used + size > budget:  # the group so far has members, and this one does not fit
            group, used = group + 1, 0
        numbers.append(group)
        used += size
    return numbers


_PARTITION_GROUPS: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]] = {}
_MEMO_INDEXES = 256


def partition_groups(manifest: IndexManifest, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(group of each partition, bytes of each partition: its base and delta objects), int64 arrays, of an
    index version, remembered per version, since every query of it asks again."""
    memo = (manifest.table, manifest.generation, manifest.index_version, manifest.created_at,
            manifest.centroids.checksum, manifest.nlist, budget)  # names one published manifest
    known = _PARTITION_GROUPS.get(memo)
    if known is None:
        sizes = [sum(ref.size for ref in refs) for refs in manifest.partitions]
        known = (np.array(group_numbers(sizes, budget), np.int64), np.array(sizes, np.int64))
        if len(_PARTITION_GROUPS) >= _MEMO_INDEXES:
            _PARTITION_GROUPS.clear()  # one atomic step, safe beside other threads' lookups
        _PARTITION_GROUPS[memo] = known
    return known


def fragment_groups(stats: SnapshotStats, budget: int) -> dict[int, tuple[int, int]]:
    """(group, bytes of its vectors) of every fragment of the pinned version, grouped in fragment id order."""
    sizes = [f.rows * stats.vector_bytes for f in stats.fragments]
    return {f.fragment_id: (group, size) for f, group, size in zip(stats.fragments, group_numbers(sizes, budget),
                                                                     sizes, strict=True)}


def route(planned: list[tuple[str, int, int]], routing: Routing, replica: int = 0
          ) -> tuple[list[str], list[GroupWork], int, bool]:
    """The routing key of each planned item from its (group's key, tasks it stands for, bytes they scan x
    queries): its group's key when the plan's work reaches `fanout_min_bytes` (one executor per group, in
    parallel), else the key of the group holding most of the work (one executor, one hop); of the given
    replica of that group. Returns the keys, the groups largest work first, the work, and whether the plan
    fans out."""
    per_group: dict[str, list[int]] = {}
    for key, tasks, work in planned:
        counts = per_group.setdefault(key, [0, 0])
        counts[0] += tasks
        counts[1] += work
    groups = sorted((GroupWork(key, n, work) for key, (n, work) in per_group.items()),
                    key=lambda g: (-g.work_bytes, g.key))
    total = sum(g.work_bytes for g in groups)
    fanout = len(groups) > 1 and total >= routing.fanout_min_bytes
    keys = [key for key, _, _ in planned] if fanout or not groups else [groups[0].key] * len(planned)
    if replica:
        keys = [replica_key(key, replica) for key in keys]
    return keys, groups, total, fanout


def plan_search(
    request: SearchRequest,
    stats: SnapshotStats,
    index: LoadedIndex | None = None,
    selectivity: float | None = None,
    prefilter_threshold: float = 0.05,
    routing: Routing | None = None,
    breadth: float = 1.0,
) -> SearchPlan:
    """Compile a validated search (query/request.validate) against a pinned version's statistics and the
    table's index, if any. No I/O: the same inputs give the same plan.

    Exact plans flat-scan every fragment with the filter pushed down. IVF plans probe the centroids here,
    make one task per routing key of the probed partitions (the plan's `probes` say which queries scan each)
    plus one flat task per fragment holding rows the index lacks (read-your-writes), and filter after the
    search unless the filter is selective enough (`selectivity` <= `prefilter_threshold`) that an exact
    prefiltered scan is cheaper and better. `breadth` (>= 1, the recall
    monitor's, query/recall.py) multiplies the probe count and a graph's ef. Tasks are keyed by their
    routing group, or all by one key when the work is under `routing.fanout_min_bytes` (see the module).
    Each query finds `request.limit` (k + offset) results.
    """
    routing = routing or Routing()
    metric = request.metric or stats.metric
    selective = request.filter is not None and request.prefilter and (
        selectivity is not None and selectivity <= prefilter_threshold)
    other_metric = None if index is None or request.bypass_index or index.manifest.metric == metric else (
        index.manifest.metric)  # the index orders rows by its own metric: useless for this search
    if index is None or request.bypass_index or other_metric or selective:
        return _exact_plan(stats, request, metric, selectivity, routing, other_metric)
    return _ivf_plan(stats, request, metric, index, selectivity, routing, max(1.0, breadth))


def _fragment_work(stats: SnapshotStats, groups: dict[int, tuple[int, int]], nq: int,
                   rows: dict[int, int] | None = None) -> list[tuple[int, str, int]]:
    """(fragment id, its group's key, bytes x queries) of each fragment in `rows` (fragment id -> rows it
    scans; None: every fragment, whole)."""
    per_row = stats.vector_bytes
    chosen = {fid: size // per_row for fid, (_, size) in groups.items()} if rows is None else rows
    return [(fid, fragment_group_key(stats.table, groups[fid][0]), n * per_row * nq)
            for fid, n in sorted(chosen.items())]


def _fragment_tasks(stats: SnapshotStats, fragments: list[tuple[int, str, int]], keys: list[str],
                    min_row_id: int = 0) -> list[Task]:
    return [Task(FRAGMENT, key, stats.table, stats.version, fragment_id=fid, min_row_id=min_row_id)
            for (fid, _, _), key in zip(fragments, keys, strict=True)]


def _exact_plan(stats: SnapshotStats, request: SearchRequest, metric: str, selectivity: float | None,
                routing: Routing, index_metric: str | None = None) -> SearchPlan:
    fragments = _fragment_work(stats, fragment_groups(stats, routing.partition_group_bytes), len(request.queries))
    replica = routing.replica(request.queries)
    keys, touched, work, fanout = route([(key, 1, work) for _, key, work in fragments], routing, replica)
    return SearchPlan(
        table=stats.table, version=stats.version, metric=metric, k=request.limit, filter=request.filter,
        strategy="exact-prefilter" if request.filter else "exact", tasks=_fragment_tasks(stats, fragments, keys),
        fetch_k=request.limit, selectivity=selectivity, groups=touched, work_bytes=work, fanout=fanout,
        replica=replica, index_metric=index_metric,
    )


def probes_of(probes: np.ndarray, partitions: Sequence[int]) -> list[np.ndarray | None]:
    """For each of `partitions`, the queries (rows of `probes`, ascending) that probe it, None when all do:
    each query scans only its own `nprobes` partitions, so a batch answers exactly as its queries would one
    by one. An executor derives them from the batch's `probes` for the partitions of its tasks."""
    nq, width = probes.shape
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")  # stable: each partition's queries come out in ascending order
    ordered = flat[order]
    wanted = np.asarray(partitions, dtype=flat.dtype)
    lo, hi = np.searchsorted(ordered, wanted, "left"), np.searchsorted(ordered, wanted, "right")
    rows = order // width
    return [None if h - lo_ == nq else rows[lo_:h] for lo_, h in zip(lo.tolist(), hi.tolist(), strict=True)]


def _ivf_plan(stats: SnapshotStats, request: SearchRequest, metric: str, index: LoadedIndex,
              selectivity: float | None, routing: Routing, breadth: float) -> SearchPlan:
    manifest = index.manifest
    nq = len(request.queries)
    # a client's nprobes below the probe count that reaches the table's target recall is raised to it (the
    # build measured it, index/tuning.py); a table wanting cheaper searches lowers its target_recall
    nprobes = max(request.nprobes or int(manifest.params["nprobes"]), manifest.min_nprobes)
    nprobes = min(math.ceil(nprobes * breadth), manifest.nlist, limits.MAX_NPROBES)
    probed = kernels.probe(request.queries, index.centroids, nprobes, metric=metric).astype(np.int32, copy=False)
    partitions, probing = np.unique(probed, return_counts=True)  # probed partitions, and how many queries each
    group_of, sizes = partition_groups(manifest, routing.partition_group_bytes)
    # a group is a run of consecutive partitions, so the probed ones (ascending) come group by group
    groups = group_of[partitions]
    starts = np.flatnonzero(np.concatenate([[True], groups[1:] != groups[:-1]]))
    runs = np.split(partitions, starts[1:])  # the probed partitions of each group touched
    planned = [(partition_group_key(stats.table, manifest.index_version, g), len(run), w) for g, run, w in zip(
        groups[starts].tolist(), runs, np.add.reduceat(sizes[partitions] * probing, starts).tolist(), strict=True)]
    watermark = manifest.row_id_watermark
    unindexed = stats.rows_from(watermark)  # rows the index lacks, at most, per fragment
    fragments = _fragment_work(stats, fragment_groups(stats, routing.partition_group_bytes), nq,
                               unindexed) if unindexed else []
    replica = routing.replica(request.queries)
    keys, touched, work, fanout = route(planned + [(key, 1, work) for _, key, work in fragments], routing, replica)
    refine = request.refine_factor if request.refine_factor is not None else int(manifest.params["refine_factor"])
    postfilter = request.filter is not None
    # the index may hold rows deleted since its build when fewer live rows remain below the watermark than
    # it indexed; the rows past the watermark are counted at their bound, so a doubt means checking
    verify = stats.live_rows - sum(unindexed.values()) < manifest.rows
    fetch_k = request.limit * max(1, refine)
    if postfilter:
        # over-fetch in proportion to how few rows pass the filter; the service widens further if short
        fetch_k *= int(min(20, max(2, np.ceil(1 / max(selectivity or 0.5, 1e-3)))))
    elif verify:
        fetch_k += max(request.limit, fetch_k // 4)
    # a graph's breadth: the client's ef raised to the one the build measured reaching the table's target
    # (index/tuning.py), else the index's default (at least that, params.py) and default_ef; tasks carry it
    # unless it is the executors' own default
    graph = manifest.codec in GRAPH_CODECS
    ef = max(request.ef or max(int(manifest.params.get("ef", 0)), default_ef(fetch_k)), manifest.min_ef)
    if breadth > 1:
        ef = min(math.ceil(ef * breadth), limits.MAX_EF)
    task_ef = ef if graph and ef != default_ef(fetch_k) else 0
    by_key: dict[str, list[np.ndarray]] = {}  # one task per routing key, its partitions ascending
    for run, key in zip(runs, keys, strict=False):
        by_key.setdefault(key, []).append(run)
    tasks = [Task(PARTITION, key, stats.table, stats.version, index_version=manifest.index_version,
                  partitions=tuple(np.concatenate(rs).tolist()), ef=task_ef) for key, rs in by_key.items()]
    tasks += _fragment_tasks(stats, fragments, keys[len(planned):], min_row_id=watermark)
    return SearchPlan(
        table=stats.table, version=stats.version, metric=metric, k=request.limit, filter=request.filter,
        strategy="ivf-postfilter" if postfilter else "ivf", tasks=tasks, fetch_k=fetch_k,
        index_version=manifest.index_version, nprobes=nprobes, ef=ef if graph else 0, breadth=breadth,
        target_recall=manifest.params.get("target_recall"), partitions=partitions.tolist(), refine_factor=refine,
        postfilter=postfilter, verify_alive=verify, selectivity=selectivity, groups=touched, work_bytes=work,
        fanout=fanout, replica=replica, probes=None if nprobes >= manifest.nlist else probed,
    )


# ---- The plan's wire form: query node <-> executor, on both transports -----------------------------------
# A task batch's header holds its tasks, k (candidates per query), the metric, the filter, `timeout_ms` (the
# time the query node still waits for it, appliance/deadline.py, from which the executor makes its own
# deadline), the request id, an IVF plan's `probes` (each query's partitions, so each partition of the
# tasks is scanned for the queries that probe it only), and how the executor finishes its candidates
# (`finish`: results kept per query, and whether to drop deleted rows, post-filter, refine with exact
# vectors) and which payload columns it returns for the results it keeps (`columns`). Over HTTP (`POST
# /internal/v1/search`) the header and the float32 query matrix travel as one frame (appliance/storage/frames.py),
# and so do the answer's ids, distances and payload (the Arrow IPC stream's bytes as a third, uint8, array).
#
# Over Arrow Flight (appliance/executor/runner.py, appliance/query/dispatch.py) one batch is one
# message of a DoExchange stream: the header, as JSON, is the message's app_metadata, and the query matrix is
# a record batch of one `vector: list<float32>` column (a variable list, so one stream schema serves every
# dimension), built and read without copying the floats. The answer is a record batch of `ids: uint64` and
# `distances: float32`, nq x kept flattened row by row, whose app_metadata holds the batch's stats (JSON),
# followed, when payload columns were asked for, by a newline and an Arrow IPC stream of one record batch: the
# columns of the found results (ids not NO_ID) in that order (`answer_metadata`, `split_metadata`; one stream
# has one schema, and the columns change from batch to batch); or, when the executor refused or failed the
# batch, an empty batch whose app_metadata is `{"status", "code", "error", "detail"}` (an HTTP status and the
# JSON error the HTTP path would have answered), so the stream stays usable for the next batch.

CONTENT_TYPE = "application/x-appliance-tasks"
INTERNAL_TOKEN_HEADER = "x-appliance-token"  # the fleet's shared internal token, on every call to an executor
TIMEOUT_FIELD = "timeout_ms"
REQUEST_ID_FIELD = "request_id"
PROBES_FIELD = "probes"  # an IVF plan's partitions of each query ([nq][nprobes]); absent: all scan every one
WIRE_FIELD = "wire"  # in an executor's /readyz: the task batch form it reads
WIRE_LEVEL = 2
"""The task batch form executors of this version read, and advertise (`wire` in /readyz): 2, partition tasks
listing their partitions and the batch's `probes`; executors before it (no `wire`) read 1, one task per
partition naming its queries (`legacy_tasks`). Executors read both, so a query node sends each executor the
form it advertises, and a fleet upgrades in any order (an AWS instance refresh replaces query nodes and
executors side by side)."""

QUERY_SCHEMA = pa.schema([pa.field("vector", pa.list_(pa.float32()), nullable=False)])
RESULT_SCHEMA = pa.schema([pa.field("ids", pa.uint64(), nullable=False),
                           pa.field("distances", pa.float32(), nullable=False)])
EMPTY_RESULT = pa.record_batch([pa.array([], pa.uint64()), pa.array([], pa.float32())], schema=RESULT_SCHEMA)


@dataclass(frozen=True)
class Finish:
    """How an executor finishes a batch's candidates before answering (the header's `finish` and
    `columns`): keep the best `keep` per query of those that survive dropping rows deleted at the pinned
    version (`verify`) and rows failing the batch's filter (`postfilter`), ranked by exact distance when
    `refine`; and return the payload `columns` of the rows kept. A header without `finish` (a query node of
    an older version) asks for the candidates as they are: keep = k, nothing dropped, no columns."""

    keep: int
    refine: bool = False
    verify: bool = False
    postfilter: bool = False
    columns: tuple[str, ...] = ()

    @property
    def drops(self) -> bool:
        """Whether finishing looks up the candidates' rows (refine, verify or post-filter)."""
        return self.refine or self.verify or self.postfilter

    def to_header(self) -> dict[str, Any]:
        return {"finish": {"keep": self.keep, "refine": self.refine, "verify": self.verify,
                           "postfilter": self.postfilter}, "columns": list(self.columns)}

    @classmethod
    def from_header(cls, header: dict[str, Any], k: int) -> Finish:
        """ValueError when the fields are malformed or keep exceeds k."""
        doc = header.get("finish")
        columns = header.get("columns") or []
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ValueError("columns must be a list of column names")
        if doc is None:
            return cls(k, columns=tuple(columns))
        if not isinstance(doc, dict):
            raise ValueError("finish must be an object")
        keep = doc.get("keep")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= k:
            raise ValueError(f"finish.keep must be an integer from 1 to k ({k}), got {keep!r}")
        flags = [doc.get(name, False) for name in ("refine", "verify", "postfilter")]
        if not all(isinstance(flag, bool) for flag in flags):
            raise ValueError("finish.refine, .verify and .postfilter are booleans")
        return cls(keep, *flags, columns=tuple(columns))


def legacy_tasks(tasks: Sequence[Task], probes: np.ndarray | None) -> list[dict[str, object]]:
    """`tasks` in wire form 1, for an executor that does not read `probes`: one task per partition, with the
    queries that probe it (all: none named), each as that form spelled every field."""
    docs: list[dict[str, object]] = []
    for task in tasks:
        if task.kind != PARTITION:
            docs.append({**task.to_json(), "fragment": task.fragment_id, "min_row_id": task.min_row_id,
                         "index_version": -1, "partition": -1})
            continue
        rows = [None] * len(task.partitions) if probes is None else probes_of(probes, task.partitions)
        for partition, queries in zip(task.partitions, rows, strict=True):
            doc: dict[str, object] = {
                "kind": PARTITION, "key": task.key, "table": task.table, "version": task.version, "fragment": -1,
                "min_row_id": 0, "index_version": task.index_version, "partition": partition}
            if queries is not None:
                doc["queries"] = queries.tolist()
            if task.ef:
                doc["ef"] = task.ef
            docs.append(doc)
    return docs


def probes_from_header(header: dict[str, Any], nq: int) -> np.ndarray | None:
    """The batch's `probes` matrix (int32 [nq, nprobes]), None when it has none. ValueError when it is not
    one row of partition numbers per query vector, all rows as long, at most MAX_NPROBES."""
    rows = header.get(PROBES_FIELD)
    if rows is None:
        return None
    if not isinstance(rows, list) or len(rows) != nq:
        raise ValueError(f"{PROBES_FIELD} must hold one list of partitions per query vector ({nq})")
    try:
        probes = np.array(rows)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{PROBES_FIELD} must be lists of partition numbers of one length: {exc}") from exc
    if (probes.dtype.kind != "i" or probes.ndim != 2 or not 1 <= probes.shape[1] <= limits.MAX_NPROBES
            or (probes < 0).any() or (probes > _INT32_MAX).any()):
        raise ValueError(f"{PROBES_FIELD} must be lists of 1 to {limits.MAX_NPROBES} partition numbers each, "
                         "all as long")
    if (np.diff(np.sort(probes, axis=1), axis=1) == 0).any():  # probed twice, a partition's rows come twice
        raise ValueError(f"{PROBES_FIELD} must name each partition at most once per query")
    return probes.astype(np.int32, copy=False)


def queries_batch(queries: np.ndarray) -> pa.RecordBatch:
    """A float32 [nq, dimension] matrix as a record batch of one list<float32> column, sharing its memory."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq, dimension = queries.shape
    offsets = pa.array(np.arange(0, (nq + 1) * dimension, dimension, dtype=np.int32))
    return pa.record_batch([pa.ListArray.from_arrays(offsets, pa.array(queries.reshape(-1)))], schema=QUERY_SCHEMA)


def queries_of(batch: pa.RecordBatch) -> np.ndarray:
    """The query matrix of a record batch made by `queries_batch`, without copying. WireError when the
    batch is not one list<float32> column of vectors of one dimension."""
    if batch.schema != QUERY_SCHEMA:
        raise WireError(f"a task batch carries one column vector: list<float32>, not {batch.schema}")
    column = batch.column(0)
    nq = len(column)
    if nq == 0 or column.null_count:
        raise WireError("a task batch carries at least one query vector, and no null ones")
    offsets = column.offsets.to_numpy()
    dimension = int(offsets[1] - offsets[0])
    if dimension < 1 or np.any(np.diff(offsets) != dimension):
        raise WireError("the query vectors of a task batch all have the same dimension, at least 1")
    values = column.values.slice(int(offsets[0]), nq * dimension)
    if values.null_count:
        raise WireError("a query vector holds a null")
    return values.to_numpy(zero_copy_only=True).reshape(nq, dimension)


def result_batch(ids: np.ndarray, distances: np.ndarray) -> pa.RecordBatch:
    """An nq x k answer as a record batch of two flat columns, sharing the arrays' memory."""
    return pa.record_batch([pa.array(np.ascontiguousarray(ids, np.uint64).reshape(-1)),
                            pa.array(np.ascontiguousarray(distances, np.float32).reshape(-1))],
                           schema=RESULT_SCHEMA)


def result_of(batch: pa.RecordBatch, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, distances), each [nq, k], of an answer made by `result_batch`. WireError when its shape is not."""
    if batch.schema != RESULT_SCHEMA or batch.num_rows != nq * k:
        raise WireError(f"an answer of {nq} x {k} candidates expected, got {batch.num_rows} rows of {batch.schema}")
    ids = batch.column(0).to_numpy(zero_copy_only=True).reshape(nq, k)
    distances = batch.column(1).to_numpy(zero_copy_only=True).reshape(nq, k)
    return ids, distances


def payload_bytes(payload: pa.Table) -> bytes:
    """An answer's payload columns as an Arrow IPC stream (one record batch)."""
    return ARROW.encode(payload.combine_chunks())


def payload_of(data: bytes | memoryview | np.ndarray, rows: int) -> pa.Table:
    """The payload columns of an answer (`payload_bytes`), `rows` of them. WireError when they are not."""
    try:
        table = ARROW.decode(data)  # type: ignore[arg-type]
    except ValueError as exc:
        raise WireError(f"the answer's payload is not an Arrow IPC stream: {exc}") from exc
    if table.num_rows != rows:
        raise WireError(f"the answer's payload holds {table.num_rows} rows for {rows} results")
    return table


def answer_metadata(doc: dict[str, object], payload: pa.Table | None) -> bytes:
    """A Flight answer's app_metadata: the JSON document, then a newline and the payload's IPC bytes."""
    head = orjson.dumps(doc)
    return head if payload is None else head + b"\n" + payload_bytes(payload)


def split_metadata(meta: bytes) -> tuple[dict[str, object], bytes | None]:
    """(JSON document, payload IPC bytes or None) of `answer_metadata`'s bytes (JSON holds no raw newline).
    orjson.JSONDecodeError when the document is not JSON."""
    head, newline, tail = meta.partition(b"\n")
    return orjson.loads(head), tail if newline else None
