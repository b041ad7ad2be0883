"""The native API over a real fleet: tables, writes, exact search, read-your-writes, deletes, auth."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import requests
from conftest import exact_ids

from appliance.storage.schema import vector_type

STORAGE_BACKENDS = ["local", "s3"]


def test_health_and_readiness(api) -> None:
    assert requests.get(api.url + "/healthz").json()["status"] == "ok"
    ready = requests.get(api.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["executors_live"] == 2


def test_table_lifecycle(api) -> None:
    info = api.create("life", 4, "cosine", {"title": "string", "year": "int64"})
    assert (info["dimension"], info["metric"], info["rows"]) == (4, "cosine", 0)
    assert "life" in api.get("/api/v1/tables").json()["tables"]
    again = api.post("/api/v1/tables", {"name": "life", "dimension": 4})
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    assert api.http.delete(api.url + "/api/v1/tables/life").status_code == 200
    assert api.get("/api/v1/tables/life").status_code == 404
    assert "life" not in api.get("/api/v1/tables").json()["tables"]


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_search_equals_exact_search(api, metric: str) -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(600, 8)).astype(np.float32)
    name = f"exact_{metric}"
    api.create(name, 8, metric, {"n": "int64"})
    for start in range(0, 600, 150):  # several fragments, so several tasks and executors
        api.insert(name, [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(base[start:start + 150])])
    for q in rng.normal(size=(10, 8)).astype(np.float32):
        got = [r["n"] for r in api.search(name, q, k=15)]
        assert got == exact_ids(base, q, metric, 15)


def test_batch_search_and_arrow_answers(api) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 4)).astype(np.float32)
    api.create("batch", 4, "l2", {"n": "int64"})
    api.insert_arrow("batch", pa.table({"vector": pa.array(base.tolist(), vector_type(4)),
                                        "n": np.arange(200)}))
    queries = rng.normal(size=(3, 4)).astype(np.float32)
    resp = api.post("/api/v1/tables/batch/search", {"vectors": queries.tolist(), "k": 5})
    results = resp.json()["results"]
    assert [[r["n"] for r in rows] for rows in results] == [exact_ids(base, q, "l2", 5) for q in queries]
    arrow = api.http.post(api.url + "/api/v1/tables/batch/search", json={"vector": queries[0].tolist(), "k": 5},
                          headers={"accept": "application/vnd.apache.arrow.stream"})
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.column("n").to_pylist() == exact_ids(base, queries[0], "l2", 5)
    assert table.column_names[:3] == ["query_index", "_rowid", "_distance"]


def test_read_your_writes_and_deletes(api) -> None:
    api.create("ryw", 3, "l2", {"tag": "string"})
    api.insert("ryw", [{"vector": [10, 10, 10], "tag": "far"}])
    for i in range(5):
        ack = api.insert("ryw", [{"vector": [i, 0, 0], "tag": f"new{i}"}])
        top = api.search("ryw", [i, 0, 0], k=1)[0]
        assert top["tag"] == f"new{i}" and top["_distance"] == 0.0
        assert ack["version"] >= 2 + i
    deleted = api.post("/api/v1/tables/ryw/delete", {"filter": "tag = 'new3'"}).json()
    assert deleted["deleted"] == 1
    tags = [r["tag"] for r in api.search("ryw", [3, 0, 0], k=10)]
    assert "new3" not in tags and len(tags) == 5


def test_filter_and_columns(api) -> None:
    api.create("filt", 2, "l2", {"kind": "string", "n": "int64"})
    api.insert("filt", [{"vector": [i, 0], "kind": "even" if i % 2 == 0 else "odd", "n": i} for i in range(20)])
    rows = api.search("filt", [0, 0], k=5, filter="kind = 'odd'", columns=["n"])
    assert [r["n"] for r in rows] == [1, 3, 5, 7, 9]
    assert set(rows[0]) == {"_rowid", "_distance", "n"}
    assert api.search("filt", [0, 0], k=3, filter="n > 1000") == []


def test_search_on_empty_table_and_k_beyond_rows(api) -> None:
    api.create("small", 2)
    assert api.search("small", [0, 0], k=5) == []
    api.insert("small", [{"vector": [1, 1]}, {"vector": [2, 2]}])
    assert len(api.search("small", [0, 0], k=100)) == 2


def test_auth_is_required(api) -> None:
    anonymous = requests.get(api.url + "/api/v1/tables")
    assert anonymous.status_code == 401 and "x-api-key" in anonymous.json()["error"]
    wrong = requests.get(api.url + "/api/v1/tables", headers={"x-api-key": "nope"})
    assert wrong.status_code == 401


def test_executor_rejects_requests_without_the_internal_token(fleet) -> None:
    url = fleet.executors[0].url + "/internal/v1/search"
    assert requests.post(url, data=b"x").status_code == 403
    wrong = requests.post(url, data=b"x", headers={"x-appliance-token": "guess"})
    assert wrong.status_code == 403 and wrong.headers["content-type"] == "application/json"
