"""Bodies in and out of the LanceDB front: optional JSON, Arrow IPC streams in, Arrow IPC files out.

LanceDB clients send several POSTs with no body and no content-type at all (describe on open_table, drop,
version/list), JSON elsewhere, and row data as a chunked, LZ4-compressed Arrow IPC stream; query results
must come back as Arrow IPC with an Arrow content-type, or the client refuses them.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from flask import Response, request

from appliance.errors import InvalidInput, LimitExceeded, PayloadTooLarge
from appliance.query.request import parse_arrow_stream, parse_json_body, shown
from appliance.storage.tables import check_filter_text

ARROW_FILE = "application/vnd.apache.arrow.file"
HUGE_K = 2**62  # `limit(None)` and `take_*` send isize::MAX: "no limit"


def optional_json() -> dict[str, Any]:
    """The JSON object of the request, or {} when the client sent no body."""
    raw = request.get_data()
    return parse_json_body(raw) if raw.strip() else {}


def arrow_body(max_rows: int, allow_empty: bool = True) -> pa.Table:
    """The Arrow IPC stream of the request (any record batches, LZ4 or not), within the row limit."""
    raw = request.get_data()
    if not raw:
        raise InvalidInput("expected an Arrow IPC stream body (content-type application/vnd.apache.arrow.stream)")
    table = parse_arrow_stream(raw)
    if table.num_rows > max_rows:
        raise PayloadTooLarge(f"at most {max_rows} rows per request, got {table.num_rows}")
    if not allow_empty and table.num_rows == 0:
        raise InvalidInput("no rows in the request body")
    return table


def arrow_file_response(table: pa.Table, headers: dict[str, str] | None = None) -> Response:
    """An Arrow IPC *file* (what LanceDB Cloud answers queries with) under its content-type."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return Response(sink.getvalue().to_pybytes(), mimetype=ARROW_FILE, headers=headers)


def optional_int(doc: dict[str, Any], name: str, low: int = 0, high: int | None = None) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {shown(value)}")
    if value < low or (high is not None and value > high):
        raise LimitExceeded(f"{name} must be between {low} and {high if high is not None else 'any'}, got {value}",
                            None if high is None else f"limit: {name} <= {high}")
    return value


def optional_str(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {shown(value)}")
    return value


def optional_filter(doc: dict[str, Any], name: str = "predicate") -> str | None:
    """An optional SQL filter, checked (type, length, not blank) when present."""
    predicate = optional_str(doc, name)
    if predicate is not None:
        check_filter_text(predicate)
    return predicate


def optional_bool(doc: dict[str, Any], name: str, default: bool) -> bool:
    value = doc.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, got {shown(value)}")
    return value


def optional_float(doc: dict[str, Any], name: str) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a number, got {shown(value)}")
    return float(value)


def query_flag(name: str) -> bool:
    """A boolean query-string parameter as the client writes it (`true`/`false`)."""
    value = request.args.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidInput(f"query parameter {name} must be true or false, got {value!r}")
    return value in ("true", "1")
