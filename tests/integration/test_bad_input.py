"""Bad input gets a 4xx with a JSON error naming the problem; the fleet keeps serving, the table is unharmed."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pyarrow as pa
import pytest
import requests


@pytest.fixture(scope="module")
def table(api) -> str:
    api.create("victim", 3, "l2", {"label": "string"})
    api.insert("victim", [{"vector": [1, 2, 3], "label": "a"}, {"vector": [3, 2, 1], "label": "b"}])
    return "victim"


SEARCH = "/api/v1/tables/victim/search"
ROWS = "/api/v1/tables/victim/rows"

CASES = [
    ("wrong dimension (search)", SEARCH, {"vector": [1, 2], "k": 1}, 400, "dimension"),
    ("wrong dimension (insert)", ROWS, {"rows": [{"vector": [1, 2, 3, 4]}]}, 400, "expects 3"),
    ("NaN in query", SEARCH, {"vector": [1, float("nan"), 3]}, 400, "NaN"),
    ("inf in insert", ROWS, {"rows": [{"vector": [1, float("inf"), 3]}]}, 400, "finite"),
    ("string in vector", SEARCH, {"vector": [1, "x", 3]}, 400, "numbers"),
    ("k is zero", SEARCH, {"vector": [1, 2, 3], "k": 0}, 400, "k must be"),
    ("k negative", SEARCH, {"vector": [1, 2, 3], "k": -5}, 400, "k must be"),
    ("k absurd", SEARCH, {"vector": [1, 2, 3], "k": 10**12}, 400, "k must be"),
    ("k not an int", SEARCH, {"vector": [1, 2, 3], "k": "ten"}, 400, "k must be"),
    ("filter not SQL", SEARCH, {"vector": [1, 2, 3], "filter": "label ==== 'a' AND ((("}, 400, "invalid filter"),
    ("filter unknown column", SEARCH, {"vector": [1, 2, 3], "filter": "nope > 1"}, 400, "invalid filter"),
    ("filter wrong type", SEARCH, {"vector": [1, 2, 3], "filter": "label > 5 +"}, 400, "invalid filter"),
    ("filter huge", SEARCH, {"vector": [1, 2, 3], "filter": "label = '" + "x" * 10_000 + "'"}, 400, "longer"),
    ("filter not a string", SEARCH, {"vector": [1, 2, 3], "filter": 42}, 400, "filter"),
    ("unknown column selected", SEARCH, {"vector": [1, 2, 3], "columns": ["nope"]}, 400, "unknown column"),
    ("unknown metric", SEARCH, {"vector": [1, 2, 3], "metric": "manhattan"}, 400, "metric"),
    ("no vector", SEARCH, {"k": 3}, 400, "vector"),
    ("unknown column insert", ROWS, {"rows": [{"vector": [1, 2, 3], "zzz": 1}]}, 400, "unknown column"),
    ("wrong payload type", ROWS, {"rows": [{"vector": [1, 2, 3], "label": {"a": 1}}]}, 400, "schema"),
    ("rows not a list", ROWS, {"rows": "many"}, 400, "rows"),
    ("empty rows", ROWS, {"rows": []}, 400, "rows"),
    ("unknown table search", "/api/v1/tables/ghost/search", {"vector": [1, 2, 3]}, 404, "was not found"),
    ("unknown table insert", "/api/v1/tables/ghost/rows", {"rows": [{"vector": [1]}]}, 404, "was not found"),
    ("bad table name", "/api/v1/tables", {"name": "../etc", "dimension": 3}, 400, "table name"),
    ("bad dimension", "/api/v1/tables", {"name": "t0", "dimension": 0}, 400, "dimension"),
    ("bad delete filter", "/api/v1/tables/victim/delete", {"filter": "label = = 1"}, 400, "invalid filter"),
]


@pytest.mark.parametrize(("label", "path", "body", "status", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_4xx_json(api, table, label, path, body, status, needle) -> None:
    resp = api.post(path, body)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert needle.lower() in (error["error"] + " " + error.get("detail", "")).lower()


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe", b"null"])
def test_malformed_bodies(api, table, raw: bytes) -> None:
    resp = api.http.post(api.url + SEARCH, data=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "error" in resp.json()


def test_malformed_arrow_body(api, table) -> None:
    resp = api.http.post(api.url + ROWS, data=b"not arrow at all",
                         headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert resp.status_code == 400 and "Arrow" in resp.json()["error"]


def test_unknown_route_and_method_are_json(api) -> None:
    assert api.get("/api/v1/nowhere").json()["code"] == "not_found"
    assert api.http.put(api.url + SEARCH).status_code == 405


def test_fleet_and_table_survive_bad_input(api, fleet, table) -> None:
    assert all(node.alive for node in fleet.nodes)
    assert requests.get(api.url + "/readyz").status_code == 200
    info = api.get("/api/v1/tables/victim").json()
    assert info["rows"] == 2
    assert [r["label"] for r in api.search("victim", [1, 2, 3], k=2)] == ["a", "b"]


# --- issue 17: limits with names, the filter cost guard, honest error classes ---------------------------

BOMBED = "bombed"


def fleet_pids(fleet) -> list[int]:
    """Every process of the fleet: each node's gunicorn master and its workers (from /proc)."""
    pids = []
    for node in fleet.nodes:
        todo = [node.process.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in task.read_text().split()]
    return pids


def rss(pid: int) -> int:
    with contextlib.suppress(OSError, StopIteration):
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def bombed(api) -> str:
    """A table with string and integer payload and a published IVF index, so filters go through the query
    node's planner (matching_row_ids) as well as the executors."""
    api.create(BOMBED, 3, "l2", {"s": "string", "id": "int64"})
    api.insert(BOMBED, [{"vector": [i, i % 7, 1], "s": f"s{i}", "id": i} for i in range(64)])
    resp = api.post(f"/api/v1/tables/{BOMBED}/index", {"nlist": 2})
    assert resp.status_code == 201, resp.text
    return BOMBED


def lance_post(api, path: str, body: object) -> requests.Response:
    return api.http.post(api.url + path, data=json.dumps(body), headers={"content-type": "application/json"},
                         timeout=60)


@pytest.mark.parametrize("predicate", ["regexp_match(s, '(') IS NOT NULL", "id / 0 > 1", "cast(s as int) = 1"])
@pytest.mark.parametrize("route", ["search", "explain"])
def test_filters_failing_at_run_time_on_an_indexed_table_are_400(api, bombed, predicate: str, route: str) -> None:
    resp = api.post(f"/api/v1/tables/{bombed}/{route}", {"vector": [1, 2, 3], "k": 3, "filter": predicate})
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "invalid_input"
    assert "filter" in resp.json()["error"]


NESTED = b"[" * 100_000


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/tables/{t}/search", NESTED),
    ("/api/v1/tables/{t}/search", b'{"vector": ' + NESTED + b"}"),
    ("/api/v1/tables/{t}/search", b'{"k": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"),  # valid JSON, 1,000 deep
    ("/api/v1/tables/{t}/index", b'{"nlist": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"),
    ("/api/v1/tables/{t}/delete", b'{"filter": ' + NESTED + b"}"),
    ("/v1/table/{t}/query/", NESTED),
    ("/v1/table/{t}/query/", b'{"k": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"),
    ("/v1/table/{t}/add_columns/", b'{"new_columns": ' + NESTED + b"}"),
    ("/v1/table/{t}/count_rows/", b'{"predicate": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"),
    ("/v1/table/{t}/create_index/", b'{"column": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"),
])
def test_nested_json_is_400_on_every_front(api, bombed, path: str, body: bytes) -> None:
    resp = api.http.post(api.url + path.format(t=bombed), data=body, headers={"content-type": "application/json"},
                         timeout=60)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["code"] in ("limit_exceeded", "invalid_input")


@pytest.mark.parametrize(("body", "needle"), [
    ({"refine_factor": 1_000_000_000}, "refine_factor"),
    ({"metric": "nope"}, "metric"),
    ({"nlist": 10**9}, "nlist"),
    ({"pq_m": 10**9, "codec": "pq"}, "pq_m"),
    ({"nprobes": 10**9}, "nprobes"),
    ({"kmeans_iters": 10**9}, "kmeans_iters"),
    ({"sample_rows": 2**63 - 1}, "sample_rows"),
    ({"background": True, "refine_factor": 10**9}, "refine_factor"),
])
def test_index_settings_out_of_bounds_are_400_naming_the_limit(api, bombed, body: dict, needle: str) -> None:
    resp = api.post(f"/api/v1/tables/{bombed}/index", body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/api/v1/tables/{t}/search", {"vector": [1, 2, 3], "refine_factor": 10**9}, "refine_factor"),
    ("/api/v1/tables/{t}/search", {"vector": [1, 2, 3], "k": 10_000, "refine_factor": 50}, "k x refine_factor"),
    ("/api/v1/tables/{t}/search", {"vector": [1, 2, 3], "nprobes": 10**9}, "nprobes"),
    ("/v1/table/{t}/query/", {"vector": [1, 2, 3], "k": 10, "refine_factor": 10**9}, "refine_factor"),
    ("/v1/table/{t}/query/", {"vector": [1, 2, 3], "k": 10, "nprobes": 10**9}, "nprobes"),
    ("/v1/table/{t}/create_index/", {"column": "vector", "index_type": "IVF_FLAT", "metric_type": "nope"}, "metric"),
    ("/v1/table/{t}/create_index/", {"column": "vector", "index_type": "IVF_FLAT", "num_partitions": 10**6}, "nlist"),
    ("/v1/table/{t}/create_index/", {"column": "vector", "index_type": "IVF_PQ", "num_bits": 2}, "num_bits"),
])
def test_search_and_lancedb_bounds_are_400(api, bombed, path: str, body: dict, needle: str) -> None:
    resp = lance_post(api, path.format(t=bombed), body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


BOMBS = ["lpad(s, 2000000000, 'x') = 'a'", "repeat(s, 50000000) = 'a'"]


def bomb_requests(table: str, bomb: str) -> list[tuple[str, object]]:
    """Every place a filter or SQL expression enters, with the bomb in it."""
    return [
        (f"/api/v1/tables/{table}/search", {"vector": [1, 2, 3], "k": 3, "filter": bomb}),
        (f"/api/v1/tables/{table}/search", {"vector": [1, 2, 3], "k": 3, "filter": bomb, "bypass_vector_index": True}),
        (f"/api/v1/tables/{table}/delete", {"filter": bomb}),
        (f"/v1/table/{table}/count_rows/", {"predicate": bomb}),
        (f"/v1/table/{table}/delete/", {"predicate": bomb}),
        (f"/v1/table/{table}/query/", {"vector": [1, 2, 3], "k": 3, "filter": bomb}),
        (f"/v1/table/{table}/query/", {"k": 3, "filter": bomb}),
        (f"/v1/table/{table}/update/", {"updates": [["s", bomb.split(" = ")[0]]]}),
        (f"/v1/table/{table}/update/", {"updates": [["s", "'x'"]], "predicate": bomb}),
        (f"/v1/table/{table}/add_columns/", {"new_columns": [{"name": "boom", "expression": bomb.split(" = ")[0]}]}),
        (f"/v1/table/{table}/query/", {"k": 3, "columns": {"boom": bomb.split(" = ")[0]}}),
        (f"/v1/table/{table}/query/", {"vector": [1, 2, 3], "k": 3, "columns": {"boom": bomb.split(" = ")[0]}}),
    ]


@pytest.mark.parametrize("bomb", BOMBS)
def test_filter_bombs_are_400_at_once_and_cost_nothing(api, fleet, bombed, bomb: str) -> None:
    pids = fleet_pids(fleet)
    before = {pid: rss(pid) for pid in pids}
    for path, body in bomb_requests(bombed, bomb):
        started = time.perf_counter()
        resp = lance_post(api, path, body)
        assert resp.status_code == 400, (path, resp.text)
        assert resp.json()["code"] == "limit_exceeded", (path, resp.text)
        assert bomb.split("(")[0] in resp.json()["error"], (path, resp.text)
        assert time.perf_counter() - started < 1.0, path
    grown = {pid: rss(pid) - before[pid] for pid in pids}
    assert all(rss(pid) for pid in pids), "a process of the fleet died"
    assert max(grown.values()) < 100 * 2**20, grown
    assert api.post(f"/api/v1/tables/{bombed}/search", {"vector": [1, 2, 3], "k": 3}).status_code == 200
    assert lance_post(api, f"/v1/table/{bombed}/count_rows/", {}).json() == 64


@pytest.mark.parametrize("condition", ["when_matched_update_all_filt", "when_not_matched_by_source_delete_filt"])
def test_merge_insert_conditions_pass_the_filter_guard(api, bombed, condition: str) -> None:
    rows = pa.table({"vector": pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32(), 3)), "s": ["s1"], "id": [1]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    resp = api.http.post(f"{api.url}/v1/table/{bombed}/merge_insert/", data=sink.getvalue().to_pybytes(),
                         params={"on": "id", "when_matched_update_all": "true", condition: BOMBS[1]},
                         headers={"content-type": "application/vnd.apache.arrow.stream"}, timeout=60)
    assert resp.status_code == 400 and "repeat" in resp.json()["error"], resp.text
