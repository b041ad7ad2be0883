"""Limits with names (appliance/limits.py): JSON depth, search and index-build bounds, checked at the edge."""

from __future__ import annotations

import json
import time

import pytest

from appliance import limits
from appliance.errors import InvalidInput, LimitExceeded
from appliance.index.params import IndexParams
from appliance.query.lancedb.query import parse_query
from appliance.query.request import json_depth, parse_index_request, parse_json_body, parse_search


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,  # orjson's own limit, before Python sees a value
    b'{"vector": ' + b"[" * 100_000 + b"}",
    b'{"k": ' + b"[" * 1_000 + b"]" * 1_000 + b"}",  # valid JSON 1,000 deep: repr of it would recurse
    json.dumps({"filter": nested(limits.MAX_JSON_DEPTH + 1)}).encode(),
])
def test_nested_json_is_a_limit_not_a_recursion(raw: bytes) -> None:
    with pytest.raises(LimitExceeded, match="nested deeper than"):
        parse_json_body(raw)


@pytest.mark.parametrize("doc", [
    {"a": "[[[[" * 100, "b": [[1]]},  # brackets in strings do not nest
    {"a": "\\" * 3 + '"' + "[" * 100},  # an escaped quote does not end the string
    {"a": "\\" * 4, "b": "[" * 100},  # an even run of backslashes escapes nothing
    {"filter": nested(limits.MAX_JSON_DEPTH - 1)},
    {"rows": [{"id": i, "vector": [0.5] * 8, "s": 'x["y'} for i in range(200)]},
])
def test_legitimate_bodies_pass(doc: dict) -> None:
    assert parse_json_body(json.dumps(doc).encode()) == doc


def test_depth_scan_is_fast_on_a_big_insert() -> None:
    body = json.dumps({"rows": [{"id": i, "vector": [0.25] * 384, "s": 'a"b'} for i in range(20_000)]}).encode()
    started = time.perf_counter()
    assert json_depth(body) == 4
    assert time.perf_counter() - started < 2.0  # about 0.1 s for these 40 MB on an idle core


def search(**fields) -> dict:
    return {"vector": [0.0, 1.0], **fields}


@pytest.mark.parametrize(("doc", "named"), [
    (search(refine_factor=1_000_000_000), "refine_factor"),
    (search(refine_factor=limits.MAX_REFINE_FACTOR + 1), "refine_factor"),
    (search(k=10_000, refine_factor=50), "k x refine_factor"),
    (search(nprobes=limits.MAX_NPROBES + 1), "nprobes"),
    (search(k=10_001), "k"),
    ({"vectors": [[0.0, 1.0]] * 1_000, "k": 10_000, "refine_factor": 2}, "query vectors x k x refine_factor"),
])
def test_search_bounds_at_the_native_edge(doc: dict, named: str) -> None:
    with pytest.raises(LimitExceeded, match=named) as caught:
        parse_search("t", doc, max_k=10_000, max_queries=1_000)
    assert caught.value.to_json()["code"] == "limit_exceeded"


def test_search_within_bounds_passes() -> None:
    request, _ = parse_search("t", search(k=1_000, refine_factor=100, nprobes=64), max_k=10_000, max_queries=1_000)
    assert (request.k, request.refine_factor, request.nprobes) == (1_000, 100, 64)


@pytest.mark.parametrize("doc", [
    {"vector": [0.0, 1.0], "refine_factor": 1_000_000_000},
    {"vector": [0.0, 1.0], "k": 5_000, "refine_factor": 100},
    {"vector": [0.0, 1.0], "nprobes": 10**9},
    {"vector": [0.0, 1.0], "minimum_nprobes": 10**9},
    {"vector": [0.0, 1.0], "ef": 10**9},
])
def test_search_bounds_at_the_lancedb_edge(doc: dict) -> None:
    with pytest.raises(LimitExceeded):
        parse_query("t", doc, max_k=10_000, max_queries=1_000)


@pytest.mark.parametrize(("doc", "named"), [
    ({"refine_factor": 1_000_000_000}, "refine_factor"),
    ({"nlist": 10**9}, "nlist"),
    ({"nprobes": 10**9}, "nprobes"),
    ({"pq_m": 10**9}, "pq_m"),
    ({"sample_rows": 2**63 - 1}, "sample_rows"),
    ({"kmeans_iters": 10**6}, "kmeans_iters"),
    ({"batch_rows": 10**9}, "batch_rows"),
])
def test_index_parameters_are_bounded(doc: dict, named: str) -> None:
    with pytest.raises(LimitExceeded, match=named):
        IndexParams.from_json(doc)
    with pytest.raises(LimitExceeded, match=named):
        parse_index_request(doc)


@pytest.mark.parametrize("doc", [{"kmeans_iters": 0}, {"batch_rows": 0}, {"nlist": -1}])
def test_index_parameters_below_their_floor_are_bad_input_not_a_limit(doc: dict) -> None:
    with pytest.raises(InvalidInput, match=next(iter(doc))) as caught:
        IndexParams.from_json(doc)
    assert caught.value.code == "invalid_input"


def test_resolved_parameters_are_checked_again() -> None:
    unchecked = IndexParams(refine_factor=10**9)  # as code that skipped from_json would make it
    with pytest.raises(LimitExceeded, match="refine_factor"):
        unchecked.resolved(rows=1_000, dimension=8)
    assert IndexParams(nlist=65_536).resolved(rows=10**8, dimension=8).sample_rows <= limits.MAX_SAMPLE_ROWS


@pytest.mark.parametrize("metric", ["nope", 3, ["l2"]])
def test_a_bad_metric_is_bad_input(metric) -> None:
    with pytest.raises(InvalidInput, match="metric"):
        parse_index_request({"metric": metric})


def test_index_request_splits_background_and_metric() -> None:
    assert parse_index_request({"metric": "COSINE", "nlist": 4}) == (False, "cosine", {"nlist": 4})
    assert parse_index_request({"background": True, "codec": "sq8"}) == (True, None, {"codec": "sq8"})
