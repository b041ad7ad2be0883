"""The query node's lean hot path over a real fleet whose query node runs 2 gunicorn workers: binary query
vectors (raw float32, Arrow IPC), orjson answers, drain shared by the workers, and read-your-writes across
workers with a long table version cache (a write on one worker is seen at once by a search on the other)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
import requests
from conftest import Api, exact_ids, start_fleet

from appliance.fleet import Fleet

DIM = 8
OCTET = "application/octet-stream"
ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture(scope="module")
def hot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("hot")
    # A version cache far longer than the test: only the node's own invalidation can show a write.
    fleet = start_fleet(root / "data", root / "logs", executors=1, query_workers=2, version_check_seconds=60.0)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def api(hot: Fleet) -> Api:
    return Api(hot.url, hot.api_key)


@pytest.fixture(scope="module")
def base(api: Api) -> np.ndarray:
    rows = np.random.default_rng(3).normal(size=(300, DIM)).astype(np.float32)
    api.create("hp", DIM, "l2", {"n": "int64"})
    api.insert("hp", [{"vector": v.tolist(), "n": i} for i, v in enumerate(rows)])
    return rows


def fresh(api: Api, path: str, **kwargs: object) -> requests.Response:
    """A request on a new connection, so the node's two workers both take some."""
    headers = {"x-api-key": api.key, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return requests.post(api.url + path, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


def arrow_stream(column: pa.Array, name: str = "vector") -> bytes:
    table = pa.table({name: column})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_binary_query_vectors_answer_as_json_ones(api: Api, base: np.ndarray) -> None:
    queries = np.random.default_rng(4).normal(size=(3, DIM)).astype(np.float32)
    expected = [exact_ids(base, q, "l2", 5) for q in queries]
    path = "/api/v1/tables/hp/search"

    one = fresh(api, path, data=queries[0].astype("<f4").tobytes(), params={"k": 5},
                headers={"content-type": OCTET, "x-vector-dimension": str(DIM)})
    assert one.status_code == 200, one.text
    assert one.content.endswith(b"\n")  # orjson answers, newline-terminated like the stdlib's were not
    assert [r["n"] for r in one.json()["results"]] == expected[0]

    batch = fresh(api, path, data=queries.astype("<f4").tobytes(), params={"k": 5, "columns": "n"},
                  headers={"content-type": OCTET, "x-vector-dimension": str(DIM)})
    assert [[r["n"] for r in rows] for rows in batch.json()["results"]] == expected

    single_as_batch = fresh(api, path, data=queries[0].tobytes(), params={"k": 5, "batch": "true"},
                            headers={"content-type": OCTET, "x-vector-dimension": str(DIM)})
    assert [[r["n"] for r in rows] for rows in single_as_batch.json()["results"]] == [expected[0]]

    fixed = pa.FixedSizeListArray.from_arrays(pa.array(queries.ravel()), DIM)
    arrow = fresh(api, path, data=arrow_stream(fixed), params={"k": 5, "filter": "n >= 0"},
                  headers={"content-type": ARROW})
    assert arrow.status_code == 200, arrow.text
    assert [[r["n"] for r in rows] for rows in arrow.json()["results"]] == expected
    lists = pa.array(queries[:1].astype(np.float64).tolist())  # list<double>, one row: not a batch
    arrow_one = fresh(api, path, data=arrow_stream(lists), params={"k": 5}, headers={"content-type": ARROW})
    assert [r["n"] for r in arrow_one.json()["results"]] == expected[0]
    # ... and Arrow out, as for a JSON body
    both = fresh(api, path, data=arrow_stream(fixed), params={"k": 5},
                 headers={"content-type": ARROW, "accept": ARROW})
    assert pa.ipc.open_stream(both.content).read_all().column("n").to_pylist() == sum(expected, [])


@pytest.mark.parametrize(("body", "params", "headers", "needle"), [
    (b"\0" * 28, {}, {"content-type": OCTET, "x-vector-dimension": str(DIM)}, "not a whole number"),
    (b"\0" * 36, {}, {"content-type": OCTET, "x-vector-dimension": str(DIM)}, "not a whole number"),
    (b"", {}, {"content-type": OCTET, "x-vector-dimension": str(DIM)}, "empty"),
    (b"\0" * 32, {}, {"content-type": OCTET}, "x-vector-dimension"),
    (b"\0" * 32, {}, {"content-type": OCTET, "x-vector-dimension": "eight"}, "x-vector-dimension"),
    (b"\0" * 32, {}, {"content-type": OCTET, "x-vector-dimension": "0"}, "x-vector-dimension"),
    (b"\0" * 16, {}, {"content-type": OCTET, "x-vector-dimension": "4"}, "dimension"),  # the table has 8
    (np.full(DIM, np.nan, "<f4").tobytes(), {}, {"content-type": OCTET, "x-vector-dimension": str(DIM)}, "NaN"),
    (b"\0" * 32, {"k": "ten"}, {"content-type": OCTET, "x-vector-dimension": str(DIM)}, "k must be an integer"),
    (b"\0" * 32, {"kk": "1"}, {"content-type": OCTET, "x-vector-dimension": str(DIM)}, "unknown search parameter"),
    (b"\0" * 32, {"k": "0"}, {"content-type": OCTET, "x-vector-dimension": str(DIM)}, "k must be between"),
    (b"not arrow", {}, {"content-type": ARROW}, "Arrow IPC"),
    (arrow_stream(pa.array([[1.0] * DIM]), "vec"), {}, {"content-type": ARROW}, "one column, 'vector'"),
    (arrow_stream(pa.array([[1.0] * DIM, [1.0] * (DIM - 1)])), {}, {"content-type": ARROW}, "same dimension"),
    (arrow_stream(pa.array([[1.0] * DIM, None])), {}, {"content-type": ARROW}, "null"),
    (arrow_stream(pa.array(["a"])), {}, {"content-type": ARROW}, "list of numbers"),
])
def test_bad_binary_bodies_are_400(api: Api, base: np.ndarray, body: bytes, params: dict, headers: dict,
                                   needle: str) -> None:
    resp = fresh(api, "/api/v1/tables/hp/search", data=body, params=params, headers=headers)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"] + resp.json().get("detail", ""), resp.json()


def test_a_write_on_one_worker_is_seen_by_the_next_search_on_any(api: Api, base: np.ndarray) -> None:
    """The node caches each table's latest version for 60 s here; every insert, acknowledged by either
    worker, must be in the very next search, sent on a new connection (so to either worker)."""
    query = np.zeros(DIM, np.float32)
    for i in range(24):
        n = 10_000 + i
        resp = fresh(api, "/api/v1/tables/hp/rows", json={"rows": [{"vector": query.tolist(), "n": n}]})
        assert resp.status_code == 200, resp.text
        found = fresh(api, "/api/v1/tables/hp/search", json={"vector": query.tolist(), "k": 1,
                                                              "filter": f"n = {n}"})
        assert found.status_code == 200, found.text
        assert [r["n"] for r in found.json()["results"]] == [n], f"insert {i} not seen by the next search"
        assert found.json()["version"] >= resp.json()["version"]


def _send_head(url: str, key: str) -> socket.socket:
    """A search whose body is still being sent: counted in flight by the worker that took it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /api/v1/tables/hp/search HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\n"
                 f"content-type: application/json\r\ncontent-length: 100\r\n\r\n{{".encode())
    return sock


def test_drain_covers_every_worker(api: Api, hot: Fleet, base: np.ndarray) -> None:
    admin = {"x-api-key": hot.api_key}
    slow = _send_head(hot.url, hot.api_key)
    try:
        deadline = time.monotonic() + 20
        while requests.get(hot.url + "/admin/drain", headers=admin, timeout=10).json()["in_flight"] < 1:
            assert time.monotonic() < deadline, "the unfinished request is not counted"
            time.sleep(0.05)
        # Whichever worker answers, it counts the other's request too.
        for _ in range(12):
            assert requests.get(hot.url + "/admin/drain", headers=admin, timeout=10).json()["in_flight"] == 1
        drained = requests.post(hot.url + "/admin/drain?wait=0.5", headers=admin, timeout=30)
        assert drained.status_code == 202 and not drained.json()["idle"], drained.text
        for _ in range(12):  # every worker refuses new work
            refused = fresh(api, "/api/v1/tables/hp/search", json={"vector": [0.0] * DIM, "k": 1})
            assert refused.status_code == 503 and refused.json()["code"] == "draining"
            assert requests.get(hot.url + "/readyz", timeout=10).status_code == 503
        body = b'"vector": [' + b",".join([b"0"] * DIM) + b'], "k": 1}'
        slow.sendall(body.ljust(99, b" "))
        assert slow.recv(100).startswith(b"HTTP/1.1 200"), "the request that was in flight is served"
    finally:
        slow.close()
    idle = requests.post(hot.url + "/admin/drain?wait=10", headers=admin, timeout=30)
    assert idle.status_code == 200 and idle.json()["idle"] and idle.json()["in_flight"] == 0
    assert requests.post(hot.url + "/admin/undrain", headers=admin, timeout=10).json()["draining"] is False
    for _ in range(12):
        assert fresh(api, "/api/v1/tables/hp/search", json={"vector": [0.0] * DIM, "k": 1}).status_code == 200
        assert requests.get(hot.url + "/readyz", timeout=10).status_code == 200
