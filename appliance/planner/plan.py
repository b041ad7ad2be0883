"""The planner: a pure function of (validated request, snapshot statistics, index) -> plan, and how a plan's
tasks are grouped for routing. It reads nothing from storage: what it knows of the table comes from
`stats.SnapshotStats`, gathered once per version, and the filter's selectivity is an estimate passed in.

Routing works on *groups*, not single tasks: a table's IVF partitions are cut into groups of consecutive
partitions whose index objects add up to at most `partition_group_bytes`, and its fragments likewise, and
every task carries its group's key. Tasks of one key meet one executor (and its cache), so a small table
lives whole on one executor and a large one spreads over the ring. A plan whose work (bytes scanned,
counted once per query) is under `fanout_min_bytes` sends every task under the key of its largest group:
one executor, one hop. Groups come from the manifest and the fragments' row counts alone (no I/O), so every
query node computes the same keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

import kernels
from appliance import limits
from appliance.config import Settings
from appliance.index.catalog import LoadedIndex
from appliance.index.codec import GRAPH_CODECS
from appliance.index.manifest import IndexManifest
from appliance.index.params import default_ef
from appliance.planner.stats import SnapshotStats
from appliance.planner.wire import Finish
from appliance.query.request import SearchRequest
from appliance.routing.ring import replica_key

FRAGMENT = "fragment"
PARTITION = "partition"



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
    of the task's group (or, when the plan does not fan out, of the plan's largest group), shared by many
    tasks; `name` tells one task from another.

    A `fragment` task flat-scans one fragment of the pinned table version; a `partition` task scans one
    IVF partition (and its deltas) of a published index version.
    """

    kind: str
    key: str
    table: str
    version: int
    fragment_id: int = -1
    min_row_id: int = 0  # fragment tasks scan only rows with ids >= this (the ones the index lacks)
    index_version: int = -1
    partition: int = -1
    queries: tuple[int, ...] | None = None  # the batch's queries that probe this partition; None: all
    ef: int = 0  # partition tasks of a graph index: search breadth; 0 = the executor's default_ef(k)

    @property
    def name(self) -> str:
        """What the task scans, unique within a plan: `T/index/v<N>/partition/<p>` or `T/fragment/<id>`."""
        if self.kind == PARTITION:
            return partition_key(self.table, self.index_version, self.partition)
        return fragment_key(self.table, self.fragment_id)

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "kind": self.kind, "key": self.key, "table": self.table, "version": self.version,
            "fragment": self.fragment_id, "min_row_id": self.min_row_id, "index_version": self.index_version,
            "partition": self.partition}
        if self.queries is not None:
            doc["queries"] = list(self.queries)
        if self.ef:
            doc["ef"] = self.ef
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Task:
        try:
            kind = str(doc["kind"])
            if kind not in (FRAGMENT, PARTITION):
                raise ValueError(f"unknown task kind {kind!r}")
            return cls(
                kind=kind,
                key=str(doc["key"]),
                table=str(doc["table"]),
                version=int(doc["version"]),  # type: ignore[arg-type]
                fragment_id=int(doc.get("fragment", -1)),  # type: ignore[arg-type]
                min_row_id=int(doc.get("min_row_id", 0)),  # type: ignore[arg-type]
                index_version=int(doc.get("index_version", -1)),  # type: ignore[arg-type]
                partition=int(doc.get("partition", -1)),  # type: ignore[arg-type]
                queries=None if doc.get("queries") is None else tuple(int(q) for q in doc["queries"]),  # type: ignore[union-attr]
                ef=_ef(doc.get("ef", 0)),
            )
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
            "tasks": [t.name for t in self.tasks],
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


_PARTITION_GROUPS: dict[tuple[object, ...], tuple[list[int], list[int]]] = {}
_MEMO_INDEXES = 256


def partition_groups(manifest: IndexManifest, budget: int) -> tuple[list[int], list[int]]:
    """(group of each partition, bytes of each partition: its base and delta objects) of an index version,
    remembered per version, since every query of it asks again."""
    memo = (manifest.table, manifest.generation, manifest.index_version, manifest.created_at,
            manifest.centroids.checksum, manifest.nlist, budget)  # names one published manifest
    known = _PARTITION_GROUPS.get(memo)
    if known is None:
        sizes = [sum(ref.size for ref in refs) for refs in manifest.partitions]
        known = (group_numbers(sizes, budget), sizes)
        if len(_PARTITION_GROUPS) >= _MEMO_INDEXES:
            _PARTITION_GROUPS.clear()  # one atomic step, safe beside other threads' lookups
        _PARTITION_GROUPS[memo] = known
    return known


def fragment_groups(stats: SnapshotStats, budget: int) -> dict[int, tuple[int, int]]:
    """(group, bytes of its vectors) of every fragment of the pinned version, grouped in fragment id order."""
    sizes = [f.rows * stats.vector_bytes for f in stats.fragments]
    return {f.fragment_id: (group, size) for f, group, size in zip(stats.fragments, group_numbers(sizes, budget),
                                                                     sizes, strict=True)}


def route(planned: list[tuple[str, int]], routing: Routing, replica: int = 0
          ) -> tuple[list[str], list[GroupWork], int, bool]:
    """The routing key of each task from its (group's key, bytes it scans x queries): its group's key when
    the plan's work reaches `fanout_min_bytes` (one executor per group, in parallel), else the key of the
    group holding most of the work (one executor, one hop); of the given replica of that group. Returns
    the keys, the groups largest work first, the work, and whether the plan fans out."""
    per_group: dict[str, list[int]] = {}
    for key, work in planned:
        counts = per_group.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += work
    groups = sorted((GroupWork(key, n, work) for key, (n, work) in per_group.items()),
                    key=lambda g: (-g.work_bytes, g.key))
    total = sum(g.work_bytes for g in groups)
    fanout = len(groups) > 1 and total >= routing.fanout_min_bytes
    keys = [key for key, _ in planned] if fanout or not groups else [groups[0].key] * len(planned)
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
    make one task per probed partition plus one flat task per fragment holding rows the index lacks (read-
    your-writes), and filter after the search unless the filter is selective enough (`selectivity` <=
    `prefilter_threshold`) that an exact prefiltered scan is cheaper and better. `breadth` (>= 1, the recall
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
    keys, touched, work, fanout = route([(key, work) for _, key, work in fragments], routing, replica)
    return SearchPlan(
        table=stats.table, version=stats.version, metric=metric, k=request.limit, filter=request.filter,
        strategy="exact-prefilter" if request.filter else "exact", tasks=_fragment_tasks(stats, fragments, keys),
        fetch_k=request.limit, selectivity=selectivity, groups=touched, work_bytes=work, fanout=fanout,
        replica=replica, index_metric=index_metric,
    )


def _probing_queries(probed: np.ndarray) -> dict[int, tuple[int, ...] | None]:
    """For every probed partition, the queries of the batch that probe it (None when all do): each query
    scans only its own `nprobes` partitions, so a batch answers exactly as its queries would one by one."""
    nq, nprobes = probed.shape
    flat = probed.ravel()
    order = np.argsort(flat, kind="stable")  # stable: each partition's queries come out in ascending order
    partitions, starts = np.unique(flat[order], return_index=True)
    queries = (order // nprobes).tolist()
    bounds = [*starts.tolist(), len(flat)]
    return {int(p): None if bounds[i + 1] - bounds[i] == nq else tuple(queries[bounds[i]:bounds[i + 1]])
            for i, p in enumerate(partitions)}


def _ivf_plan(stats: SnapshotStats, request: SearchRequest, metric: str, index: LoadedIndex,
              selectivity: float | None, routing: Routing, breadth: float) -> SearchPlan:
    manifest = index.manifest
    nq = len(request.queries)
    # a client's nprobes below the probe count that reaches the table's target recall is raised to it (the
    # build measured it, index/tuning.py); a table wanting cheaper searches lowers its target_recall
    nprobes = max(request.nprobes or int(manifest.params["nprobes"]), manifest.min_nprobes)
    nprobes = min(math.ceil(nprobes * breadth), manifest.nlist, limits.MAX_NPROBES)
    probed = kernels.probe(request.queries, index.centroids, nprobes, metric=metric)
    probing = _probing_queries(probed)
    partitions = sorted(probing)
    group_of, sizes = partition_groups(manifest, routing.partition_group_bytes)
    planned = [(partition_group_key(stats.table, manifest.index_version, group_of[p]),
                sizes[p] * (nq if probing[p] is None else len(probing[p]))) for p in partitions]
    watermark = manifest.row_id_watermark
    unindexed = stats.rows_from(watermark)  # rows the index lacks, at most, per fragment
    fragments = _fragment_work(stats, fragment_groups(stats, routing.partition_group_bytes), nq,
                               unindexed) if unindexed else []
    replica = routing.replica(request.queries)
    keys, touched, work, fanout = route(planned + [(key, work) for _, key, work in fragments], routing, replica)
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
    tasks = [Task(PARTITION, key, stats.table, stats.version, index_version=manifest.index_version,
                  partition=p, queries=probing[p], ef=task_ef)
             for p, key in zip(partitions, keys, strict=False)]
    tasks += _fragment_tasks(stats, fragments, keys[len(partitions):], min_row_id=watermark)
    return SearchPlan(
        table=stats.table, version=stats.version, metric=metric, k=request.limit, filter=request.filter,
        strategy="ivf-postfilter" if postfilter else "ivf", tasks=tasks, fetch_k=fetch_k,
        index_version=manifest.index_version, nprobes=nprobes, ef=ef if graph else 0, breadth=breadth,
        target_recall=manifest.params.get("target_recall"), partitions=partitions, refine_factor=refine,
        postfilter=postfilter, verify_alive=verify, selectivity=selectivity, groups=touched, work_bytes=work,
        fanout=fanout, replica=replica,
    )
