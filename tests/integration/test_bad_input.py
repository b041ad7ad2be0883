"""Bad input gets a 4xx with a JSON error naming the problem; the fleet keeps serving, the table is unharmed."""

from __future__ import annotations

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
