"""A search costs what it is allowed to: a hung executor costs it about one health interval (its batch is
re-sent elsewhere as soon as the probe marks it down), and a search past its deadline, or whose client hung
up, stops on every executor."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests
from conftest import SPREAD_WORK, Api, free_port_block

from appliance.config import Settings
from appliance.fleet import Fleet
from appliance.storage.schema import vector_type

TICKS = os.sysconf("SC_CLK_TCK")


def start(root: Path, **settings: object) -> Fleet:
    port = free_port_block(3)
    fleet = Fleet(Settings.load(env={}).replace(data=str(root / "data"), port=port, executors=2,
                                                executor_base_port=port + 1, log_level="warning",
                                                **{**SPREAD_WORK, **settings}),
                  log_dir=root / "logs")
    fleet.start()
    return fleet


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants (a gunicorn master and its worker), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, IndexError):
            pass
    return total


def executors_cpu(fleet: Fleet) -> float:
    return sum(cpu_seconds(node.process.pid) for node in fleet.executors)


def test_a_hung_executor_costs_a_search_about_one_health_interval(tmp_path) -> None:
    fleet = start(tmp_path, health_interval=1.0, request_timeout=25.0)
    victim = fleet.executors[1]
    try:
        api = Api(fleet.url, fleet.api_key)
        rng = np.random.default_rng(8)
        base = rng.normal(size=(800, 16)).astype(np.float32)
        api.create("hung", 16, "l2", {"n": "int64"})
        for start_row in range(0, 800, 100):  # 8 fragments: both executors get tasks
            api.insert("hung", [{"vector": v.tolist(), "n": start_row + i}
                                for i, v in enumerate(base[start_row:start_row + 100])])
        queries = rng.normal(size=(4, 16)).astype(np.float32)
        expected = [np.argsort(((base - q) ** 2).sum(1), kind="stable")[:5].tolist() for q in queries]
        assert [r["n"] for r in api.search("hung", queries[0], k=5)] == expected[0]

        answers: list[tuple[float, int, list[int]]] = []

        def search(q: int) -> None:
            began = time.monotonic()
            resp = requests.post(f"{fleet.url}/api/v1/tables/hung/search", timeout=60,
                                 headers={"x-api-key": fleet.api_key},
                                 json={"vector": queries[q].tolist(), "k": 5, "columns": ["n"]})
            found = [r["n"] for r in resp.json()["results"]] if resp.status_code == 200 else []
            answers.append((time.monotonic() - began, resp.status_code, found == expected[q]))

        os.killpg(victim.process.pid, signal.SIGSTOP)  # hung, not dead: it accepts connections, answers none
        threads = [threading.Thread(target=search, args=(q,)) for q in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(status == 200 and right for _, status, right in answers), answers
        # the probe needs up to an interval plus its 1 s timeout to call the executor down; not 25 s
        assert max(seconds for seconds, _, _ in answers) < 6.0, answers
        ring = requests.get(f"{fleet.url}/admin/ring", headers={"x-api-key": fleet.api_key}, timeout=30).json()
        assert victim.url not in ring["live"]
    finally:
        os.killpg(victim.process.pid, signal.SIGCONT)
        fleet.stop()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory):
    """A table whose exact scan of 1,000 query vectors keeps both executors busy for seconds."""
    fleet = start(tmp_path_factory.mktemp("deadline"), health_interval=0.5, max_query_vectors=8000)
    api = Api(fleet.url, fleet.api_key)
    api.create("big", 64, "l2", {"n": "int64"})
    rng = np.random.default_rng(2)
    for f in range(64):
        vectors = rng.normal(size=(4000, 64)).astype(np.float32)
        api.insert_arrow("big", pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 64).cast(vector_type(64)),
            "n": pa.array(np.arange(f * 4000, (f + 1) * 4000), pa.int64())}))
    resp = api.post("/api/v1/tables/big/search", {"vector": [0.0] * 64, "k": 10})  # warms the executors' caches
    assert resp.status_code == 200, resp.text
    nq = 1000
    while True:  # a scan long enough to see it stop, whatever this machine's speed and load
        body = {"vectors": rng.normal(size=(nq, 64)).astype(np.float32).tolist(), "k": 10, "columns": ["n"]}
        began = time.monotonic()
        resp = api.post("/api/v1/tables/big/search", body)
        assert resp.status_code == 200, resp.text
        seconds = time.monotonic() - began
        if seconds > 1.0 or nq >= 8000:
            break
        nq *= 2
    assert seconds > 1.0, f"the scan of {nq} queries takes {seconds:.2f} s: too short to see it stop"
    yield fleet, body, seconds
    fleet.stop()


def assert_executors_go_idle(fleet: Fleet, full_scan: float) -> None:
    time.sleep(0.5)  # a batch stops between two tasks
    before = executors_cpu(fleet)
    time.sleep(min(2.0, full_scan))
    spent = executors_cpu(fleet) - before
    assert spent < 0.3, f"executors kept working: {spent:.2f} CPU s while idle (a full scan is {full_scan:.2f} s)"


def test_a_search_past_its_deadline_answers_504_and_stops_on_every_executor(big) -> None:
    fleet, body, full_scan = big
    api = Api(fleet.url, fleet.api_key)
    began = time.monotonic()
    resp = api.post("/api/v1/tables/big/search", {**body, "timeout_ms": 200})
    took = time.monotonic() - began
    assert resp.status_code == 504 and resp.json()["code"] == "deadline_exceeded", resp.text[:300]
    assert took < 0.2 + 1.0, took
    assert_executors_go_idle(fleet, full_scan)
    # the header asks the same, on either front; a timeout out of bounds is the client's error
    resp = api.http.post(f"{fleet.url}/api/v1/tables/big/search", json=body, timeout=60,
                         headers={"x-timeout-ms": "150"})
    assert resp.status_code == 504, resp.text[:300]
    for bad in (0, -5, "soon", 10**9, True):
        resp = api.post("/api/v1/tables/big/search", {**body, "timeout_ms": bad})
        assert resp.status_code == 400 and "timeout_ms" in resp.json()["error"], resp.text
    assert_executors_go_idle(fleet, full_scan)
    ring = requests.get(f"{fleet.url}/admin/ring", headers={"x-api-key": fleet.api_key}, timeout=30).json()
    assert len(ring["live"]) == 2  # a deadline marks no executor down


def test_a_client_that_hangs_up_stops_its_search_on_every_executor(big) -> None:
    fleet, body, full_scan = big
    data = Api(fleet.url, fleet.api_key).http.prepare_request(requests.Request(
        "POST", f"{fleet.url}/api/v1/tables/big/search", json=body, headers={"x-api-key": fleet.api_key}))
    host, port = fleet.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST {data.path_url} HTTP/1.1\r\nHost: {host}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in data.headers.items()) + "\r\n"
        sock.sendall(head.encode() + data.body)
        time.sleep(0.3)  # the search is running on the executors
    assert_executors_go_idle(fleet, full_scan)
