"""Table schemas, and turning client rows into Arrow that is safe to commit.

Every write passes through `conform` before Lance sees it: a table must never hold a vector of the wrong
dimension or a NaN, because one such row silently poisons every distance computed against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from appliance.errors import InvalidInput

VECTOR_COLUMN = "vector"
METRIC_KEY = b"appliance.metric"
METRICS = ("l2", "cosine", "dot")
RESERVED_COLUMNS = ("_rowid", "_distance", "_rowaddr", "_score")

_PAYLOAD_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "large_string": pa.large_string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "date32": pa.date32(),
    "timestamp": pa.timestamp("us"),
}


def vector_type(dimension: int) -> pa.DataType:
    return pa.list_(pa.field("item", pa.float32()), dimension)


def build_schema(dimension: int, metric: str, payload: Mapping[str, str] | pa.Schema | None) -> pa.Schema:
    """The schema of a new table: the vector column first, then the payload columns."""
    if not isinstance(dimension, int) or isinstance(dimension, bool) or not 1 <= dimension <= 65_536:
        raise InvalidInput(f"dimension must be an integer between 1 and 65536, got {dimension!r}")
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    fields = [pa.field(VECTOR_COLUMN, vector_type(dimension))]
    if isinstance(payload, pa.Schema):
        fields += [f for f in payload if f.name != VECTOR_COLUMN]
    elif payload:
        if not isinstance(payload, Mapping):
            raise InvalidInput("schema must be an object mapping column names to type names")
        for name, type_name in payload.items():
            if type_name not in _PAYLOAD_TYPES:
                raise InvalidInput(
                    f"column {name!r}: unknown type {type_name!r}",
                    f"known types: {', '.join(sorted(_PAYLOAD_TYPES))}",
                )
            fields.append(pa.field(name, _PAYLOAD_TYPES[type_name]))
    names = [f.name for f in fields]
    for name in names:
        if not name or name in RESERVED_COLUMNS or not str(name).isprintable():
            raise InvalidInput(f"invalid column name {name!r}")
    if len(set(names)) != len(names):
        raise InvalidInput("column names must be unique")
    return pa.schema(fields, metadata={METRIC_KEY: metric.encode()})


def dimension_of(schema: pa.Schema) -> int:
    return schema.field(VECTOR_COLUMN).type.list_size


def metric_of(schema: pa.Schema) -> str:
    return (schema.metadata or {}).get(METRIC_KEY, b"l2").decode()


def payload_columns(schema: pa.Schema) -> list[str]:
    return [name for name in schema.names if name != VECTOR_COLUMN]


def schema_to_json(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def rows_to_table(rows: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """JSON rows (objects) -> an Arrow table of the table's columns, with errors that name the row. Its vectors
    are lists of float64 here: `conform` (called once, by the store, as for Arrow inserts) checks their
    lengths and values with Arrow compute and casts them to the table's type."""
    if not isinstance(rows, list) or not rows:
        raise InvalidInput("rows must be a non-empty list of objects")
    known = set(schema.names)
    numbers = {float, int}
    for i, row in enumerate(rows):  # per row, not per value: a value's type is checked by set(map(type, ...))
        if not isinstance(row, dict):
            raise InvalidInput(f"row {i} is not an object")
        if not known.issuperset(row):
            raise InvalidInput(f"row {i}: unknown column(s) {', '.join(sorted(map(str, set(row) - known)))}")
        vector = row.get(VECTOR_COLUMN)
        if not isinstance(vector, list):
            raise InvalidInput(f"row {i}: '{VECTOR_COLUMN}' must be a list of {dimension_of(schema)} numbers")
        if not numbers.issuperset(map(type, vector)):  # Arrow would read true as 1.0, "1" never
            bad = next(x for x in vector if type(x) not in numbers)
            raise InvalidInput(f"row {i}: vector values must be finite numbers, got {bad!r}")
    loose = schema.set(schema.get_field_index(VECTOR_COLUMN), pa.field(VECTOR_COLUMN, pa.list_(pa.float64())))
    try:
        return pa.Table.from_pylist(rows, schema=loose)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        raise InvalidInput("rows do not match the table schema", str(exc)) from exc


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast an incoming Arrow table to the table's schema and reject bad vectors."""
    if VECTOR_COLUMN not in table.column_names:
        raise InvalidInput(f"data has no '{VECTOR_COLUMN}' column")
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise InvalidInput(f"unknown column(s) {', '.join(sorted(extra))}")
    dimension = dimension_of(schema)
    vec = table.column(VECTOR_COLUMN)
    vtype = vec.type
    if pa.types.is_fixed_size_list(vtype) and vtype.list_size != dimension:
        raise InvalidInput(f"vectors have dimension {vtype.list_size}, the table expects {dimension}")
    if pa.types.is_list(vtype) or pa.types.is_large_list(vtype):
        lengths = pa.compute.list_value_length(vec).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dimension)
        if bad.size:
            raise InvalidInput(
                f"row {int(bad[0])}: vector has {int(lengths[bad[0]])} values, the table expects {dimension}"
            )
    columns = []
    for f in schema:
        if f.name in table.column_names:
            try:
                columns.append(table.column(f.name).cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise InvalidInput(f"column '{f.name}' cannot be read as {f.type}", str(exc)) from exc
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    out = pa.Table.from_arrays(columns, schema=schema)
    check_vectors(out)
    check_required(out)
    return out


def check_required(table: pa.Table) -> None:
    """A column declared non-nullable must hold no nulls (missing columns arrive as nulls): Lance would
    refuse the commit with an I/O-looking error otherwise."""
    for f in table.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise InvalidInput(f"column '{f.name}' is required (not nullable) but has null values")


def check_vectors(table: pa.Table) -> None:
    vec = table.column(VECTOR_COLUMN)
    if vec.null_count:
        raise InvalidInput("vectors must not be null")
    flat = vectors_to_numpy(vec)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidInput(f"row {row}: vector contains NaN or infinity")


def vectors_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column as a contiguous float32 [rows, dimension] matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dimension = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(-1, dimension)
