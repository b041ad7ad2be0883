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


@dataclass(frozen=True)
class Task:
    """One unit of executor work. `key` is what routing hashes, so equal keys meet the same cache."""

    key: str
    table: str
    version: int
    fragment_id: int

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "table": self.table, "version": self.version, "fragment": self.fragment_id}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Task:
        return cls(
            key=str(doc["key"]),
            table=str(doc["table"]),
            version=int(doc["version"]),  # type: ignore[arg-type]
            fragment_id=int(doc["fragment"]),  # type: ignore[arg-type]
        )


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
        Task(key=fragment_key(snapshot.name, fid), table=snapshot.name, version=snapshot.version, fragment_id=fid)
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
