"""Parsing and validating client request bodies into the service's terms.

Everything a client sends is checked here before any table is touched, and every rejection names
the field and what was wrong with it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from appliance.errors import InvalidInput
from appliance.planner.plan import SearchRequest
from appliance.storage.tables import check_filter_text

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidInput("request body is empty; expected a JSON object")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("request body is not valid JSON", str(exc)) from exc
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc


def parse_arrow_stream(raw: bytes) -> pa.Table:
    try:
        with pa.ipc.open_stream(raw) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput("body is not a valid Arrow IPC stream", str(exc)) from exc


def parse_int(doc: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_search(doc: dict[str, Any], max_k: int, max_queries: int) -> tuple[SearchRequest, bool]:
    """A search body -> (request, whether the client sent a batch of vectors)."""
    if "vector" in doc and "vectors" in doc:
        raise InvalidInput("give either 'vector' or 'vectors', not both")
    batch = "vectors" in doc
    raw = doc.get("vectors") if batch else doc.get("vector")
    if raw is None:
        raise InvalidInput("missing 'vector' (one query) or 'vectors' (a batch of queries)")
    queries = parse_vectors(raw if batch else [raw], "vectors" if batch else "vector")
    if len(queries) > max_queries:
        raise InvalidInput(f"at most {max_queries} query vectors per request, got {len(queries)}")
    k = parse_int(doc, "k", 10, 1, max_k)
    metric = doc.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise InvalidInput("metric must be a string")
    predicate = doc.get("filter")
    if predicate is not None:
        check_filter_text(predicate)
    columns = doc.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise InvalidInput("columns must be a list of column names")
    nprobes = parse_int(doc, "nprobes", 0, 0, 1_000_000) or None
    refine = doc.get("refine_factor")
    refine_factor = None if refine is None else parse_int(doc, "refine_factor", 0, 0, 1_000)
    prefilter = parse_bool(doc, "prefilter", True)
    bypass = parse_bool(doc, "bypass_vector_index", False)
    return SearchRequest(queries=queries, k=k, metric=metric, filter=predicate, columns=columns, nprobes=nprobes,
                         refine_factor=refine_factor, prefilter=prefilter, bypass_index=bypass), batch


def parse_bool(doc: dict[str, Any], name: str, default: bool) -> bool:
    value = doc.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, got {value!r}")
    return value


_NUMBERS = frozenset({int, float})  # not bool, which JSON true/false decode to and isinstance calls an int


def parse_vectors(raw: Any, field: str) -> np.ndarray:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(f"'{field}' must be a non-empty list")
    dims = set()
    for row in raw:
        if not isinstance(row, list) or not row:
            raise InvalidInput(f"'{field}' must hold non-empty lists of numbers")
        dims.add(len(row))
        if not _NUMBERS.issuperset(map(type, row)):  # exact types: JSON gives int and float, never subclasses
            bad = next(x for x in row if type(x) not in _NUMBERS)
            raise InvalidInput(f"'{field}' values must be numbers, got {bad!r}")
    if len(dims) != 1:
        raise InvalidInput(f"all query vectors in '{field}' must have the same dimension")
    with np.errstate(over="ignore"):
        queries = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(queries).all():
        raise InvalidInput(f"'{field}' contains NaN or infinity (or a value beyond float32 range)")
    return queries
