"""One search request: what both fronts (the native API's JSON, float32 and Arrow bodies, and the LanceDB
protocol) and explain build, and the one place it is checked.

A request is built by `search_request` (every check that needs no table: k and offset against `max_k`,
the candidate bounds of appliance/limits.py, the metric's name, the filter through the cost guard of
appliance/storage/filters.py) and validated once against the pinned version by `validate` (dimension,
columns, the filter type-checked against the schema); what the planner and the executors receive after
that is never checked again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance import limits
from appliance.errors import InvalidInput, LimitExceeded
from appliance.lru import Lru
from appliance.storage.schema import METRICS
from appliance.storage.tables import TableSnapshot, check_filter_text, clean_lance_message

if TYPE_CHECKING:  # the planner imports this module
    from appliance.planner.stats import SnapshotStats

__all__ = ["METRICS", "SearchRequest", "search_request", "type_check_filter", "validate"]

_TYPED_FILTERS: Lru[bool] = Lru(1024)


@dataclass(frozen=True, eq=False)
class SearchRequest:
    """A search: queries are float32 [nq, dimension] and finite. Built by `search_request`; after
    `validate` its metric and columns are resolved against the table."""

    queries: np.ndarray
    k: int  # results per query the client keeps
    table: str = ""
    offset: int = 0  # results per query skipped first (LanceDB paging): the plan finds k + offset
    version: int | None = None  # None: the latest; an older version is searched exactly
    metric: str | None = None  # None: the table's
    filter: str | None = None
    columns: Sequence[str] | None = None  # None: the payload columns, or every column with include_vector
    include_vector: bool = False
    nprobes: int | None = None  # IVF partitions to probe; None = the index's default
    refine_factor: int | None = None  # re-rank the top k x refine_factor with exact vectors
    ef: int | None = None  # graph codecs: search breadth per partition; None = params.default_ef(fetch k)
    prefilter: bool = True  # evaluate the filter before the search (exact), else over-fetch and filter after
    bypass_index: bool = False  # exact flat scan even when an index exists

    SHAPE = ("table", "version", "k", "offset", "metric", "filter", "include_vector", "nprobes",
             "refine_factor", "ef", "prefilter", "bypass_index")

    @property
    def limit(self) -> int:
        """Results per query the plan finds: k + offset."""
        return self.k + self.offset

    def shape(self) -> tuple[Any, ...]:
        """Everything but the query vectors: searches of one shape can run as one batch (coalesce.py)."""
        columns = None if self.columns is None else tuple(self.columns)
        return (*(getattr(self, f) for f in self.SHAPE), columns, self.queries.shape[1])


def search_request(table: str, queries: np.ndarray, k: int, max_k: int, *, offset: int = 0, k_field: str = "k",
                   version: int | None = None, metric: Any = None, metric_field: str = "metric",
                   filter: Any = None, columns: Sequence[str] | None = None, include_vector: bool = False,
                   nprobes: int | None = None, refine_factor: int | None = None, ef: int | None = None,
                   prefilter: bool = True, bypass_index: bool = False) -> SearchRequest:
    """The one builder of a search: the fronts decode their fields' types, this checks what needs no table.
    `k_field` and `metric_field` are the fields' names in the front's protocol, for error messages."""
    if not 1 <= k + offset <= max_k:
        raise LimitExceeded(f"{k_field} must be between 1 and {max_k}, got {k + offset}",
                            f"limit: {k_field} <= {max_k}")
    limits.check_candidates(k + offset, refine_factor, len(queries))
    if metric is not None:
        if not isinstance(metric, str) or metric.lower() not in METRICS:
            raise InvalidInput(f"{metric_field} must be one of {', '.join(METRICS)}, got {metric!r}")
        metric = metric.lower()
    if filter is not None:
        check_filter_text(filter)  # the cost guard, once per request
    if columns is not None and (not isinstance(columns, list | tuple) or not all(isinstance(c, str) for c in columns)):
        raise InvalidInput("columns must be a list of column names")
    return SearchRequest(queries=queries, k=k, table=table, offset=offset, version=version, metric=metric,
                         filter=filter, columns=None if columns is None else tuple(columns),
                         include_vector=include_vector, nprobes=nprobes, refine_factor=refine_factor, ef=ef,
                         prefilter=prefilter, bypass_index=bypass_index)


def validate(request: SearchRequest, snapshot: TableSnapshot, stats: SnapshotStats,
             latest: bool = True) -> SearchRequest:
    """The request checked against the pinned version, once: the query vectors' dimension, the columns,
    the filter parsed and type-checked against the schema (by Lance, nothing read; remembered per version
    and filter). Returns it with its metric (the table's unless named) and columns resolved, and the index
    bypassed when the version is not the latest (the index describes the latest only)."""
    if request.queries.shape[1] != stats.dimension:
        raise InvalidInput(f"query vector has dimension {request.queries.shape[1]}, "
                           f"table '{stats.table}' has dimension {stats.dimension}")
    columns = request.columns
    if columns is None:
        columns = stats.columns if request.include_vector else stats.payload_columns
    unknown = [c for c in columns if c not in stats.columns]
    if unknown:
        raise InvalidInput(f"unknown column(s) in columns: {', '.join(map(str, unknown))}")
    if request.filter is not None:
        type_check_filter(snapshot, request.filter, stats)
    return dataclasses.replace(request, metric=request.metric or stats.metric, columns=tuple(columns),
                               bypass_index=request.bypass_index or not latest)


def type_check_filter(snapshot: TableSnapshot, predicate: str, stats: SnapshotStats | None = None) -> None:
    """Lance parses a filter that passed the cost guard and checks it against the version's schema
    (explain_plan reads no data); remembered per version and filter."""
    key = (stats.key(snapshot.dataset.uri, predicate) if stats is not None
           else (snapshot.dataset.uri, snapshot.version, snapshot.identity(), predicate))
    if _TYPED_FILTERS.get(key):
        return
    try:
        snapshot.dataset.scanner(filter=predicate, columns=[], with_row_id=True, limit=1).explain_plan()
    except (ValueError, OSError, RuntimeError) as exc:
        raise InvalidInput(f"invalid filter: {predicate}", clean_lance_message(exc)) from exc
    _TYPED_FILTERS.put(key, True)
