"""Schema evolution of the LanceDB protocol: `add_columns/`, `alter_columns/`, `drop_columns/`.

Payload columns only: the vector column can be neither dropped nor altered, since every search and the
IVF index read it by name and type.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from flask import Blueprint, Response

from appliance.errors import InvalidInput
from appliance.query.lancedb.schema_json import SIMPLE_TYPES
from appliance.query.lancedb.wire import optional_json
from appliance.query.service import QueryService
from appliance.web import json_response

_FROM_JSON = {name: t for t, name in SIMPLE_TYPES.items()}


def register(bp: Blueprint, service: QueryService) -> None:
    @bp.post("/table/<name>/add_columns/")
    def add_columns(name: str) -> Response:
        raw = optional_json().get("new_columns")
        if not isinstance(raw, list) or not raw or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("expression"), str)
                for c in raw):
            raise InvalidInput("new_columns must be a non-empty list of {name, expression}")
        return json_response({"version": service.table(name).add_columns({c["name"]: c["expression"] for c in raw})})

    @bp.post("/table/<name>/alter_columns/")
    def alter_columns(name: str) -> Response:
        raw = optional_json().get("alterations")
        if not isinstance(raw, list) or not raw or not all(isinstance(a, dict) for a in raw):
            raise InvalidInput("alterations must be a non-empty list of {path, rename?, nullable?, data_type?}")
        return json_response({"version": service.table(name).alter_columns([_alteration(a) for a in raw])})

    @bp.post("/table/<name>/drop_columns/")
    def drop_columns(name: str) -> Response:
        raw = optional_json().get("columns")
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
            raise InvalidInput("columns must be a non-empty list of column names")
        return json_response({"version": service.table(name).drop_columns(raw)})


def _alteration(doc: dict[str, Any]) -> dict[str, Any]:
    """The client's alteration (`rename`, JsonDataType `data_type`) in Lance's terms (`name`, Arrow type)."""
    path = doc.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidInput("every alteration needs a column 'path'")
    out: dict[str, Any] = {"path": path}
    if doc.get("rename") is not None:
        if not isinstance(doc["rename"], str):
            raise InvalidInput("rename must be a string")
        out["name"] = doc["rename"]
    if doc.get("nullable") is not None:
        if not isinstance(doc["nullable"], bool):
            raise InvalidInput("nullable must be true or false")
        out["nullable"] = doc["nullable"]
    if doc.get("data_type") is not None:
        out["data_type"] = _data_type(doc["data_type"])
    if len(out) == 1:
        raise InvalidInput(f"alteration of {path!r} changes nothing")
    return out


def _data_type(raw: Any) -> pa.DataType:
    name = raw.get("type") if isinstance(raw, dict) else raw
    if not isinstance(name, str) or name not in _FROM_JSON:
        raise InvalidInput(f"data_type {raw!r} is not supported", f"supported: {', '.join(sorted(_FROM_JSON))}")
    return _FROM_JSON[name]
