"""One search request: what both fronts (the native API's JSON, float32 and Arrow bodies, and the LanceDB
protocol) and explain build, and the one place it is checked; and the parsing of every client body.

A request is built by `search_request` (every check that needs no table: k and offset against `max_k`,
the candidate bounds of appliance/limits.py, the metric's name, the filter through the cost guard of
appliance/storage/filters.py) and validated once against the pinned version by `validate` (dimension,
columns, the filter type-checked against the schema); what the planner and the executors receive after
that is never checked again.

The second half parses and validates client request bodies (JSON, raw float32, Arrow IPC; search, insert,
index, create) into the service's terms: everything a client sends is checked here before any table is
touched, and every rejection names the field and what was wrong with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from appliance import limits
from appliance.errors import InvalidInput, LimitExceeded
from appliance.index.params import IndexParams, check_metric
from appliance.lru import Lru
from appliance.storage.schema import METRICS
from appliance.storage.tables import TableSnapshot, check_filter_text, clean_lance_message

if TYPE_CHECKING:  # the planner imports this module
    from appliance.planner.plan import SnapshotStats

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
        """Everything but the query vectors: searches of one shape can run as one batch (service.Coalescer)."""
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


# ---- Client bodies: parsing and checking what a client sends ---------------------------------------------
# Every client body (both fronts) is parsed here into the service's terms, before any table is touched.

ARROW_STREAM = "application/vnd.apache.arrow.stream"
OCTET_STREAM = "application/octet-stream"
DIMENSION_HEADER = "x-vector-dimension"
BINARY_SEARCH_TYPES = (ARROW_STREAM, OCTET_STREAM)
MAX_DIMENSION = 65_536  # the largest vector a table may hold (appliance/storage/schema.py)
# The search fields a binary search body takes as query-string parameters, by type.
SEARCH_PARAMS: dict[str, type] = {"k": int, "nprobes": int, "ef": int, "refine_factor": int, "timeout_ms": int,
                                  "metric": str, "filter": str, "columns": list, "prefilter": bool,
                                  "bypass_vector_index": bool, "explain": bool, "batch": bool}


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The one parser of every JSON request body (both fronts): a JSON object, nested at most
    limits.MAX_JSON_DEPTH deep, or InvalidInput. orjson refuses nesting beyond 1,024 itself, without
    recursing in Python; the bound below keeps what later code does with a value (repr in an error
    message, json.dumps) from recursing either."""
    if not raw:
        raise InvalidInput("request body is empty; expected a JSON object")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc).lower():
            raise LimitExceeded(f"request body is nested deeper than {limits.MAX_JSON_DEPTH} levels",
                                f"limit: JSON depth <= {limits.MAX_JSON_DEPTH}") from exc
        if b"NaN" in raw or b"Infinity" in raw:  # what careless clients (Python's json.dumps) write
            raise InvalidInput("request body is not valid JSON: NaN and Infinity are not JSON numbers; "
                               "send finite values only", str(exc)) from exc
        raise InvalidInput("request body is not valid JSON", str(exc)) from exc
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    if json_depth(raw) > limits.MAX_JSON_DEPTH:
        raise LimitExceeded(f"request body is nested deeper than {limits.MAX_JSON_DEPTH} levels",
                            f"limit: JSON depth <= {limits.MAX_JSON_DEPTH}")
    return doc


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a *valid* JSON text, by a vectorised scan of its
    bytes (brackets inside strings do not count): milliseconds for megabytes, and no recursion."""
    if raw.count(b"[") + raw.count(b"{") <= limits.MAX_JSON_DEPTH:
        return 0  # too few brackets to be too deep: the common case costs two memchr-like passes
    data = np.frombuffer(raw, np.uint8)
    at = np.flatnonzero(_SYNTAX[data])  # only quotes and brackets matter (numbers dominate big bodies)
    chars = data[at]
    quotes = chars == 34
    for i in np.flatnonzero(quotes).tolist():  # a quote after an odd run of backslashes is escaped (rare)
        j = int(at[i])
        run = 0
        while j - 1 - run >= 0 and raw[j - 1 - run] == 92:
            run += 1
        quotes[i] = run % 2 == 0
    inside = np.bitwise_xor.accumulate(quotes.view(np.uint8)).astype(bool)  # in a string (or its opening quote)
    step = np.where((chars == 91) | (chars == 123), 1, np.where((chars == 93) | (chars == 125), -1, 0))
    step[inside] = 0
    return int(np.cumsum(step).max()) if len(step) else 0


_SYNTAX = np.zeros(256, bool)
_SYNTAX[[34, 91, 93, 123, 125]] = True  # " [ ] { }


def parse_arrow_stream(raw: bytes) -> pa.Table:
    """An Arrow IPC stream body as a table, fully validated: a stream whose batches claim more rows or bytes
    than their buffers hold reads without error, and would fail (or read out of bounds) only later."""
    try:
        with pa.ipc.open_stream(raw) as reader:
            table = reader.read_all()
        table.validate(full=True)
        return table
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput("body is not a valid Arrow IPC stream", str(exc)) from exc


# The fields each native JSON body accepts (the LanceDB protocol's bodies stay tolerant: its clients send
# fields this appliance has no use for). A misspelled field ("filtr") would otherwise pass silently.
CREATE_TABLE_FIELDS = ("name", "dimension", "metric", "schema")
INSERT_FIELDS = ("rows",)
DELETE_FIELDS = ("filter",)


def search_fields() -> tuple[str, ...]:
    """A JSON search (or explain) body's fields: its query vectors and every query-string parameter."""
    return ("vector", "vectors", *SEARCH_PARAMS)


def check_fields(doc: dict[str, Any], accepted: Any, what: str) -> None:
    """InvalidInput naming the first field of `doc` that `accepted` lacks, and the accepted ones."""
    for name in doc:
        if name not in accepted:
            raise InvalidInput(f"unknown field {shown(name)} in {what}; accepted: {', '.join(accepted)}")


def parse_int(doc: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise LimitExceeded(f"{name} must be between {low} and {high}, got {value}", f"limit: {name} <= {high}")
    return value


def shown(value: Any) -> str:
    """A client's value in an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_index_request(doc: dict[str, Any]) -> tuple[bool, str | None, dict[str, Any]]:
    """The native index endpoint's body -> (background, metric, the index parameters' JSON), every value
    checked: a background request is refused now, not in the indexer."""
    doc = dict(doc)
    check_fields(doc, ("background", "metric", *IndexParams.__dataclass_fields__), "an index body")
    background = doc.pop("background", False)
    if not isinstance(background, bool):
        raise InvalidInput(f"background must be true or false, got {shown(background)}")
    metric = check_metric(doc.pop("metric", None))
    if background and metric is not None:
        raise InvalidInput("metric applies to an index built now; background builds use the table's metric")
    IndexParams.from_json(doc)
    return background, metric, doc


def parse_search(table: str, doc: dict[str, Any], max_k: int, max_queries: int,
                 queries: np.ndarray | None = None) -> tuple[SearchRequest, bool]:
    """A native search (or explain) body -> (request, whether the client sent a batch of vectors). Decodes
    the fields' types; search_request checks them. `queries` are the query vectors of a binary
    body (parse_binary_search), whose other fields come in `doc`."""
    if queries is not None:
        batch = parse_bool(doc, "batch", False) or len(queries) > 1
    else:
        if "vector" in doc and "vectors" in doc:
            raise InvalidInput("give either 'vector' or 'vectors', not both")
        batch = "vectors" in doc
        raw = doc.get("vectors") if batch else doc.get("vector")
        if raw is None:
            raise InvalidInput("missing 'vector' (one query) or 'vectors' (a batch of queries)")
        queries = parse_vectors(raw if batch else [raw], "vectors" if batch else "vector")
    if len(queries) > max_queries:
        raise LimitExceeded(f"at most {max_queries} query vectors per request, got {len(queries)}")
    refine = doc.get("refine_factor")
    return search_request(
        table, queries, parse_int(doc, "k", 10, 1, max_k), max_k, metric=doc.get("metric"),
        filter=doc.get("filter"), columns=doc.get("columns"),
        nprobes=parse_int(doc, "nprobes", 0, 0, limits.MAX_NPROBES) or None,
        refine_factor=None if refine is None else parse_int(doc, "refine_factor", 0, 0, limits.MAX_REFINE_FACTOR),
        ef=parse_int(doc, "ef", 0, 0, limits.MAX_EF) or None,  # graph codecs' search breadth
        prefilter=parse_bool(doc, "prefilter", True), bypass_index=parse_bool(doc, "bypass_vector_index", False),
    ), batch


def parse_bool(doc: dict[str, Any], name: str, default: bool) -> bool:
    value = doc.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, got {shown(value)}")
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
            raise InvalidInput(f"'{field}' values must be numbers, got {shown(bad)}")
    if len(dims) != 1:
        raise InvalidInput(f"all query vectors in '{field}' must have the same dimension")
    with np.errstate(over="ignore"):
        queries = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(queries).all():
        raise InvalidInput(f"'{field}' contains NaN or infinity (or a value beyond float32 range)")
    return queries


def parse_binary_search(mimetype: str, raw: bytes, headers: Any, args: Any, max_queries: int
                        ) -> tuple[np.ndarray, dict[str, Any]]:
    """A search whose query vectors come as binary -> (queries [n, dimension] float32, the other fields as
    a search document for parse_search). Two forms, both parsed in microseconds where 384 floats of JSON
    take 60 us (orjson) to 450 us (json):

    - `application/octet-stream`: raw little-endian float32, `n * dimension` of them, with the dimension
      in the `x-vector-dimension` header; the body's length must be a whole number of vectors.
    - `application/vnd.apache.arrow.stream`: an Arrow IPC stream of one column `vector` (a fixed-size
      list, or lists of one length, of numbers without nulls), one row per query vector.

    The other search fields (k, filter, columns as a comma-separated list, ...) are query-string
    parameters, each given at most once; an unknown one is refused (a typo would otherwise pass silently)."""
    doc = search_params(args)
    if mimetype == OCTET_STREAM:
        queries = _float32_vectors(raw, headers.get(DIMENSION_HEADER), max_queries)
    else:
        queries = _arrow_vectors(raw, max_queries)
    if not np.isfinite(queries).all():
        raise InvalidInput("the query vectors contain NaN or infinity")
    return queries, doc


def search_params(args: Any) -> dict[str, Any]:
    """Query-string search fields (a werkzeug MultiDict) as the values a JSON search body would hold."""
    doc: dict[str, Any] = {}
    for name in args:
        kind = SEARCH_PARAMS.get(name)
        if kind is None:
            raise InvalidInput(f"unknown search parameter {shown(name)}",
                               f"binary search bodies take {', '.join(SEARCH_PARAMS)} in the query string")
        values = args.getlist(name)
        if len(values) > 1:
            raise InvalidInput(f"search parameter '{name}' is given {len(values)} times")
        text = values[0]
        if kind is int:
            try:
                doc[name] = int(text)
            except ValueError as exc:
                raise InvalidInput(f"{name} must be an integer, got {shown(text)}") from exc
        elif kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise InvalidInput(f"{name} must be true or false, got {shown(text)}")
            doc[name] = text.lower() in ("true", "1")
        elif kind is list:
            doc[name] = [c.strip() for c in text.split(",") if c.strip()]
        else:
            doc[name] = text
    return doc


def _float32_vectors(raw: bytes, dimension_text: str | None, max_queries: int) -> np.ndarray:
    if dimension_text is None:
        raise InvalidInput(f"an {OCTET_STREAM} search body needs the {DIMENSION_HEADER} header "
                           "(the number of float32 values in one query vector)")
    try:
        dimension = int(dimension_text)
    except ValueError as exc:
        raise InvalidInput(f"{DIMENSION_HEADER} must be an integer, got {shown(dimension_text)}") from exc
    if not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidInput(f"{DIMENSION_HEADER} must be between 1 and {MAX_DIMENSION}, got {dimension}")
    width = 4 * dimension
    if not raw:
        raise InvalidInput("request body is empty; expected little-endian float32 query vectors")
    if len(raw) % width:
        raise InvalidInput(f"a body of {len(raw)} bytes is not a whole number of {dimension}-dimension float32 "
                           f"vectors ({width} bytes each)")
    if len(raw) // width > max_queries:
        raise LimitExceeded(f"at most {max_queries} query vectors per request, got {len(raw) // width}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(-1, dimension)  # a writable copy


def _arrow_vectors(raw: bytes, max_queries: int) -> np.ndarray:
    if not raw:
        raise InvalidInput("request body is empty; expected an Arrow IPC stream with a 'vector' column")
    table = parse_arrow_stream(raw)
    if table.column_names != ["vector"]:
        raise InvalidInput("an Arrow search body holds one column, 'vector' (one row per query vector); "
                           f"got {shown(table.column_names)}")
    if table.num_rows == 0:
        raise InvalidInput("the Arrow search body holds no query vector")
    if table.num_rows > max_queries:
        raise LimitExceeded(f"at most {max_queries} query vectors per request, got {table.num_rows}")
    column = table.column("vector").combine_chunks()
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not (
            pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise InvalidInput(f"column 'vector' must be a list of numbers per row, got {kind}")
    if column.null_count:
        raise InvalidInput("column 'vector' has a null row")
    if pa.types.is_fixed_size_list(kind):
        dimension = kind.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy()
        dimension = int(lengths[0])
        if (lengths != dimension).any():
            raise InvalidInput("all query vectors in column 'vector' must have the same dimension")
    if not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidInput(f"query vectors must have 1 to {MAX_DIMENSION} values, got {dimension}")
    values = column.flatten()
    if values.null_count:
        raise InvalidInput("column 'vector' has a null value")
    with np.errstate(over="ignore"):
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dimension)
