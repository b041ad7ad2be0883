"""/openapi.json documents every field the parsers accept: its search and index bodies are derived from the
declarations the parsers check, so a field added to one cannot be missing from the other."""

from __future__ import annotations

from appliance.index.params import CODECS, IndexParams
from appliance.query.openapi import openapi_document
from appliance.query.request import search_fields


def _body(doc: dict, path: str) -> dict:
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_the_native_search_body_lists_every_field_the_parser_accepts() -> None:
    doc = openapi_document("test")
    for path in ("/api/v1/tables/{name}/search", "/api/v1/tables/{name}/explain"):
        schema = _body(doc, path)
        assert set(schema["properties"]) == set(search_fields()), path
        assert schema["additionalProperties"] is False


def test_the_binary_search_takes_every_other_field_as_a_query_parameter() -> None:
    op = openapi_document("test")["paths"]["/api/v1/tables/{name}/search"]["post"]
    named = {p["name"] for p in op["parameters"] if p["in"] == "query"}
    assert set(search_fields()) - {"vector", "vectors"} <= named


def test_the_index_body_lists_every_index_parameter_and_codec() -> None:
    schema = _body(openapi_document("test"), "/api/v1/tables/{name}/index")
    assert set(IndexParams.__dataclass_fields__) | {"metric", "background"} == set(schema["properties"])
    assert schema["properties"]["codec"]["enum"] == list(CODECS)
    assert "hnsw_sq" in schema["properties"]["codec"]["enum"]
