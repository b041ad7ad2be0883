"""Arrow schemas as Lance's `JsonSchema`, the form LanceDB clients read from `describe/`.

The client parses this to know the table's types (it casts the rows of `add()` to them before sending),
so the type names must be exactly Lance's (`lance/rust/lance/src/arrow/json.rs`): `float` for float32,
`double` for float64, `fixed_size_list` with a `length`, `timestamp:us:-` and so on.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

SIMPLE_TYPES: dict[pa.DataType, str] = {
    pa.null(): "null",
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.uint8(): "uint8",
    pa.uint16(): "uint16",
    pa.uint32(): "uint32",
    pa.uint64(): "uint64",
    pa.float16(): "halffloat",
    pa.float32(): "float",
    pa.float64(): "double",
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.binary(): "binary",
    pa.large_binary(): "large_binary",
    pa.date32(): "date32:day",
    pa.date64(): "date64:ms",
}


def schema_to_lance_json(schema: pa.Schema) -> dict[str, Any]:
    """`{"fields": [JsonField, ...], "metadata": {...}}` of an Arrow schema."""
    doc: dict[str, Any] = {"fields": [field_to_json(f) for f in schema]}
    if schema.metadata:
        doc["metadata"] = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in schema.metadata.items()}
    return doc


def field_to_json(field: pa.Field) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": field.name, "type": type_to_json(field.type), "nullable": field.nullable}
    if field.metadata:
        doc["metadata"] = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in field.metadata.items()}
    return doc


def type_to_json(t: pa.DataType) -> dict[str, Any]:
    """One `JsonDataType`: `{"type": name}` plus `fields` for nested types and `length` for fixed sizes."""
    if t in SIMPLE_TYPES:
        return {"type": SIMPLE_TYPES[t]}
    if pa.types.is_fixed_size_list(t):
        return {"type": "fixed_size_list", "fields": [field_to_json(t.value_field)], "length": t.list_size}
    if pa.types.is_large_list(t):
        return {"type": "large_list", "fields": [field_to_json(t.value_field)]}
    if pa.types.is_list(t):
        return {"type": "list", "fields": [field_to_json(t.value_field)]}
    if pa.types.is_struct(t):
        return {"type": "struct", "fields": [field_to_json(t.field(i)) for i in range(t.num_fields)]}
    if pa.types.is_timestamp(t):
        return {"type": f"timestamp:{t.unit}:{t.tz or '-'}"}
    if pa.types.is_time32(t) or pa.types.is_time64(t):
        return {"type": f"time{t.bit_width}:{t.unit}"}
    if pa.types.is_duration(t):
        return {"type": f"duration:{t.unit}"}
    if pa.types.is_decimal(t):
        return {"type": f"decimal:{t.bit_width}:{t.precision}:{t.scale}"}
    if pa.types.is_fixed_size_binary(t):
        return {"type": "fixed_size_binary", "length": t.byte_width}
    if pa.types.is_dictionary(t):
        value, key = type_to_json(t.value_type)["type"], type_to_json(t.index_type)["type"]
        return {"type": f"dict:{value}:{key}:{str(t.ordered).lower()}"}
    return {"type": str(t)}
