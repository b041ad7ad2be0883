"""Drain: a drained executor is routed around with no failed query, a drained query node refuses new work
with a JSON 503 and reports not ready, and both come back on undrain."""

from __future__ import annotations

import threading
import time

import numpy as np
import requests
from conftest import SPREAD_WORK, Api, SearchLoad, start_fleet

from appliance import __version__
from appliance.drain import DrainState
from appliance.executor.app import INTERNAL_TOKEN_HEADER


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_drain_state_waits_for_in_flight_and_refuses_new_work() -> None:
    state = DrainState()
    assert state.enter()
    state.drain()
    assert not state.enter()  # refused, not counted
    assert not state.wait_idle(0.05)
    threading.Timer(0.2, state.leave).start()
    started = time.monotonic()
    assert state.wait_idle(5.0)
    assert time.monotonic() - started >= 0.15
    assert state.describe()["in_flight"] == 0
    state.undrain()
    assert state.enter()


def test_drain_executor_and_query_node(tmp_path) -> None:
    fleet = start_fleet(tmp_path / "data", tmp_path / "logs", executors=3, **SPREAD_WORK)
    try:
        api = Api(fleet.url, fleet.api_key)
        token = {INTERNAL_TOKEN_HEADER: fleet.settings.internal_token}
        rng = np.random.default_rng(5)
        base = rng.normal(size=(600, 8)).astype(np.float32)
        api.create("d", 8, "l2", {"n": "int64"})
        for start in range(0, 600, 100):
            api.insert("d", [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(base[start:start + 100])])
        queries = rng.normal(size=(10, 8)).astype(np.float32)
        expected = [np.argsort(((base - q) ** 2).sum(1), kind="stable")[:5].tolist() for q in queries]

        with SearchLoad(fleet.url, fleet.api_key, "d", queries, expected) as load:
            victim = fleet.executors[0].url
            # An executor: the admin endpoints want the internal token.
            assert requests.post(f"{victim}/admin/drain", timeout=10).status_code == 403
            resp = requests.post(f"{victim}/admin/drain?wait=10", headers=token, timeout=20)
            assert resp.status_code == 200, resp.text
            assert resp.json()["draining"] and resp.json()["idle"]
            ready = requests.get(f"{victim}/readyz", timeout=5)
            assert ready.status_code == 503 and ready.json()["draining"]
            health = requests.get(f"{victim}/healthz", timeout=5)
            assert health.status_code == 200 and health.json()["version"] == __version__
            refused = requests.post(f"{victim}/internal/v1/search", headers=token, data=b"", timeout=5)
            assert refused.status_code == 503 and refused.json()["code"] == "draining"

            def excluded() -> bool:
                ring = api.get("/admin/ring").json()
                return victim not in ring["live"] and any(m["url"] == victim and m["draining"]
                                                         for m in ring["members"])
            _wait(excluded)
            time.sleep(0.5)  # searches keep running on the other two

            assert requests.post(f"{victim}/admin/undrain", headers=token, timeout=5).json()["draining"] is False
            _wait(lambda: victim in api.get("/admin/ring").json()["live"])
            time.sleep(0.3)
        assert not load.failures, load.failures[:5]
        assert load.answered > 5

        # A query node: the API key guards its admin endpoints; drained, it refuses searches with JSON.
        assert requests.post(f"{fleet.url}/admin/drain", timeout=5).status_code == 401
        resp = api.post("/admin/drain?wait=5")
        assert resp.status_code == 200 and resp.json()["draining"], resp.text
        refused = api.post("/api/v1/tables/d/search", {"vector": queries[0].tolist(), "k": 5})
        assert refused.status_code == 503 and refused.json()["code"] == "draining"
        ready = requests.get(f"{fleet.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["draining"]
        assert requests.get(f"{fleet.url}/healthz", timeout=5).status_code == 200
        assert api.get("/admin/drain").json()["draining"]
        assert api.post("/admin/undrain").json()["draining"] is False
        assert requests.get(f"{fleet.url}/readyz", timeout=5).status_code == 200
        assert api.search("d", queries[0], k=5)
    finally:
        fleet.stop()


def test_membership_probes_readyz_and_falls_back_to_healthz() -> None:
    """A draining executor is excluded but not failing; one without /readyz (an older release met mid-upgrade)
    is probed on /healthz."""
    from flask import Flask
    from werkzeug.serving import make_server

    from appliance.routing.membership import Membership

    state = {"draining": False}
    current, older = Flask("current"), Flask("older")

    @current.get("/readyz")
    def readyz():
        return ({"ready": False, "draining": True}, 503) if state["draining"] else {"ready": True}

    @older.get("/healthz")
    def healthz():
        return {"status": "ok"}

    servers = [make_server("127.0.0.1", 0, app, threaded=True) for app in (current, older)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        urls = [f"http://127.0.0.1:{s.server_port}" for s in servers]
        membership = Membership(urls, interval=60)
        membership.probe_all()
        assert membership.live() == list(membership.ring.nodes)
        state["draining"] = True
        membership.probe_all()
        assert membership.live() == [urls[1]]
        snapshot = {m["url"]: m for m in membership.snapshot()}
        assert snapshot[urls[0]]["draining"] and snapshot[urls[0]]["healthy"]
        state["draining"] = False
        membership.probe_all()
        assert sorted(membership.live()) == sorted(urls)
    finally:
        for s in servers:
            s.shutdown()
