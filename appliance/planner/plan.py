"""Search requests and the plans compiled from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import kernels
from appliance.errors import InvalidInput
from appliance.index.catalog import LoadedIndex
from appliance.storage.schema import METRICS
from appliance.storage.tables import TableSnapshot


@dataclass(frozen=True)
class SearchRequest:
    """A validated search: queries are float32 [nq, dimension] and finite."""

    queries: np.ndarray
    k: int
    metric: str | None = None
    filter: str | None = None
    columns: list[str] | None = None
    nprobes: int | None = None  # IVF partitions to probe; None = the index's default
    refine_factor: int | None = None  # re-rank the top k x refine_factor with exact vectors
    prefilter: bool = True  # evaluate the filter before the search (exact), else over-fetch and filter after
    bypass_index: bool = False  # exact flat scan even when an index exists


FRAGMENT = "fragment"
PARTITION = "partition"


@dataclass(frozen=True)
class Task:
    """One unit of executor work. `key` is what routing hashes, so equal keys meet the same cache.

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

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "kind": self.kind, "key": self.key, "table": self.table, "version": self.version,
            "fragment": self.fragment_id, "min_row_id": self.min_row_id, "index_version": self.index_version,
            "partition": self.partition}
        if self.queries is not None:
            doc["queries"] = list(self.queries)
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed task: {exc}") from exc


@dataclass(frozen=True)
class SearchPlan:
    """What the query node will do: tasks for the executors, and how to finish their candidates.

    Executors return `fetch_k` candidates per query; the query node then drops rows deleted since the
    index was built, applies a post-filter, re-ranks with exact vectors when `refine_factor` > 0, and keeps
    `k`.
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
    partitions: list[int] = field(default_factory=list)
    refine_factor: int = 0
    postfilter: bool = False
    verify_alive: bool = False  # the index may still hold rows deleted since it was built
    selectivity: float | None = None

    @property
    def uses_index(self) -> bool:
        return self.index_version is not None

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
            "partitions_probed": self.partitions,
            "refine_factor": self.refine_factor,
            "tasks": [t.key for t in self.tasks],
        }


def fragment_key(table: str, fragment_id: int) -> str:
    """The routing key of a fragment carries no version: appends only add fragments, so a fragment keeps
    its executor (and that executor's cache) across versions. What the executor reads is still pinned by
    the task's version."""
    return f"{table}/fragment/{fragment_id}"


def partition_key(table: str, index_version: int, partition: int) -> str:
    return f"{table}/index/v{index_version}/partition/{partition}"


def plan_search(
    snapshot: TableSnapshot,
    request: SearchRequest,
    index: LoadedIndex | None = None,
    selectivity: float | None = None,
    prefilter_threshold: float = 0.05,
) -> SearchPlan:
    """Compile a search against a pinned table version (and the index, if any).

    Exact plans flat-scan every fragment with the filter pushed down. IVF plans probe the centroids here,
    make one task per probed partition plus one flat task per fragment holding rows the index lacks (read-
    your-writes), and filter after the search unless the filter is selective enough (`selectivity` <=
    `prefilter_threshold`) that an exact prefiltered scan is cheaper and better.
    """
    if request.queries.shape[1] != snapshot.dimension:
        raise InvalidInput(
            f"query vector has dimension {request.queries.shape[1]}, "
            f"table '{snapshot.name}' has dimension {snapshot.dimension}"
        )
    metric = request.metric or snapshot.metric
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if request.filter is not None:
        snapshot.validate_filter(request.filter)
    selective = request.filter is not None and request.prefilter and (
        selectivity is not None and selectivity <= prefilter_threshold)
    if index is None or request.bypass_index or index.manifest.metric != metric or selective:
        return _exact_plan(snapshot, request, metric, selectivity)
    return _ivf_plan(snapshot, request, metric, index, selectivity)


def _fragment_tasks(snapshot: TableSnapshot, fragment_ids: list[int], min_row_id: int = 0) -> list[Task]:
    return [Task(FRAGMENT, fragment_key(snapshot.name, fid), snapshot.name, snapshot.version, fragment_id=fid,
                 min_row_id=min_row_id) for fid in fragment_ids]


def _exact_plan(snapshot: TableSnapshot, request: SearchRequest, metric: str,
                selectivity: float | None) -> SearchPlan:
    return SearchPlan(
        table=snapshot.name, version=snapshot.version, metric=metric, k=request.k, filter=request.filter,
        strategy="exact-prefilter" if request.filter else "exact",
        tasks=_fragment_tasks(snapshot, snapshot.fragment_ids()), fetch_k=request.k, selectivity=selectivity,
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


def _ivf_plan(snapshot: TableSnapshot, request: SearchRequest, metric: str, index: LoadedIndex,
              selectivity: float | None) -> SearchPlan:
    manifest = index.manifest
    nprobes = min(request.nprobes or int(manifest.params["nprobes"]), manifest.nlist)
    probed = kernels.probe(request.queries, index.centroids, nprobes, metric=metric)
    probing = _probing_queries(probed)
    partitions = sorted(probing)
    tasks = [Task(PARTITION, partition_key(snapshot.name, manifest.index_version, p), snapshot.name,
                  snapshot.version, index_version=manifest.index_version, partition=p,
                  queries=probing[p]) for p in partitions]
    watermark = manifest.row_id_watermark
    unindexed = [fid for fid, (_, hi) in snapshot.fragment_row_ranges().items() if hi >= watermark]
    tasks += _fragment_tasks(snapshot, unindexed, min_row_id=watermark)
    refine = request.refine_factor if request.refine_factor is not None else int(manifest.params["refine_factor"])
    postfilter = request.filter is not None
    verify = snapshot.live_rows_below(watermark) < manifest.rows
    fetch_k = request.k * max(1, refine)
    if postfilter:
        # over-fetch in proportion to how few rows pass the filter; the service widens further if short
        fetch_k *= int(min(20, max(2, np.ceil(1 / max(selectivity or 0.5, 1e-3)))))
    elif verify:
        fetch_k += max(request.k, fetch_k // 4)
    return SearchPlan(
        table=snapshot.name, version=snapshot.version, metric=metric, k=request.k, filter=request.filter,
        strategy="ivf-postfilter" if postfilter else "ivf", tasks=tasks, fetch_k=fetch_k,
        index_version=manifest.index_version, nprobes=nprobes, partitions=partitions, refine_factor=refine,
        postfilter=postfilter, verify_alive=verify, selectivity=selectivity,
    )
