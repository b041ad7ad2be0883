"""Search requests and the plans compiled from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from appliance.errors import InvalidInput
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
    index_version: int = -1
    partition: int = -1

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "key": self.key, "table": self.table, "version": self.version,
                "fragment": self.fragment_id, "index_version": self.index_version, "partition": self.partition}

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
                index_version=int(doc.get("index_version", -1)),  # type: ignore[arg-type]
                partition=int(doc.get("partition", -1)),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed task: {exc}") from exc


@dataclass(frozen=True)
class SearchPlan:
    table: str
    version: int
    metric: str
    k: int
    filter: str | None
    strategy: str
    tasks: list[Task] = field(default_factory=list)

    def explain(self) -> dict[str, object]:
        return {
            "table": self.table,
            "version": self.version,
            "metric": self.metric,
            "k": self.k,
            "filter": self.filter,
            "strategy": self.strategy,
            "tasks": [t.key for t in self.tasks],
        }


def fragment_key(table: str, fragment_id: int) -> str:
    """The routing key of a fragment carries no version: appends only add fragments, so a fragment keeps
    its executor (and that executor's cache) across versions. What the executor reads is still pinned by
    the task's version."""
    return f"{table}/fragment/{fragment_id}"


def plan_search(snapshot: TableSnapshot, request: SearchRequest) -> SearchPlan:
    """An exact plan: one flat-scan task per fragment of the pinned version.

    A filter is pushed into every task (prefilter), so filtered results are exact too.
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
    tasks = [
        Task(FRAGMENT, fragment_key(snapshot.name, fid), snapshot.name, snapshot.version, fragment_id=fid)
        for fid in snapshot.fragment_ids()
    ]
    return SearchPlan(
        table=snapshot.name,
        version=snapshot.version,
        metric=metric,
        k=request.k,
        filter=request.filter,
        strategy="exact-prefilter" if request.filter else "exact",
        tasks=tasks,
    )
