"""Dynamic membership on a real fleet: under a steady search load, a third executor joins the query node's
ring (after its /readyz and a prewarm of the groups the new ring gives it) and an original one leaves it
drained, with no failed query, no wrong answer and no failed executor batch; no query node restarts."""

from __future__ import annotations

import json
import time

import numpy as np
import requests
from conftest import SPREAD_WORK, Api, SearchLoad, metric_value, start_fleet

from appliance.executor.app import INTERNAL_TOKEN_HEADER

FRAGMENTS = 24  # one routing group each (SPREAD_WORK): the newcomer owns some whatever its port hashes to
ROWS = 50
WAIT = 180.0  # readiness and convergence waits: the machine may run at load 10


def _wait(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.1)


def _ring(api: Api) -> dict:
    resp = api.get("/admin/ring")
    assert resp.status_code == 200, resp.text
    return resp.json()


def _cache(url: str, token: str) -> dict:
    return requests.get(f"{url}/cache/stats", headers={INTERNAL_TOKEN_HEADER: token}, timeout=30).json()


def _failed_batches(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return metric_value(text, "appliance_dispatch_seconds_count", outcome="failed")


def test_executors_join_prewarmed_and_leave_drained_under_load(tmp_path) -> None:
    fleet = start_fleet(tmp_path / "data", tmp_path / "logs", executors=2, cache_dir=str(tmp_path / "cache"),
                        membership_prewarm_seconds=120.0, **SPREAD_WORK)
    try:
        api = Api(fleet.url, fleet.api_key)
        token = fleet.settings.internal_token
        rng = np.random.default_rng(19)
        base = rng.normal(size=(FRAGMENTS * ROWS, 8)).astype(np.float32)
        api.create("m", 8, "l2", {"n": "int64"})
        for start in range(0, len(base), ROWS):  # one fragment per insert
            api.insert("m", [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(base[start:start + ROWS])])
        queries = rng.normal(size=(12, 8)).astype(np.float32)
        expected = [np.argsort(((base - q) ** 2).sum(1), kind="stable")[:5].tolist() for q in queries]
        members_file = fleet.settings.executor_members_file
        assert json.loads(open(members_file).read()) == sorted(n.url for n in fleet.executors)
        query_pid = fleet.query.process.pid

        with SearchLoad(fleet.url, fleet.api_key, "m", queries, expected, clients=3) as load:
            _wait(lambda: load.answered >= 30, "searches before the join")
            failed_before = _failed_batches(fleet.url)

            # join: started, ready, named in the members file; the query node prewarms it, then routes to it
            newcomer = fleet.add_executor()
            assert newcomer.url in json.loads(open(members_file).read())
            _wait(lambda: newcomer.url in _ring(api)["ring"], "the newcomer joins the ring")
            fetched_at_join = _cache(newcomer.url, token)["storage"]["fetches"]
            [member] = [m for m in _ring(api)["members"] if m["url"] == newcomer.url]
            assert not member["joining"] and member["healthy"]
            report = member["prewarm"]
            assert report["groups"] > 0 and report["warmed"] == report["groups"] and report["complete"], report
            assert fetched_at_join >= report["groups"]  # it loaded them before any search reached it

            # it serves searches now, from what the prewarm loaded: no read from storage since it joined
            hits = _cache(newcomer.url, token)["ram"]["hits"]
            _wait(lambda: _cache(newcomer.url, token)["ram"]["hits"] >= hits + 20, "searches reach the newcomer")
            assert _cache(newcomer.url, token)["storage"]["fetches"] == fetched_at_join

            # leave: out of the members file, out of the ring, drained, stopped
            victim = fleet.executors[0]
            answered = load.answered
            fleet.remove_executor(victim)
            assert victim.process.poll() is not None
            ring = _ring(api)
            assert victim.url not in ring["ring"] and victim.url not in [m["url"] for m in ring["members"]]
            assert sorted(ring["ring"]) == sorted(n.url for n in fleet.executors)
            _wait(lambda: load.answered >= answered + 30, "searches after the leave")

        assert not load.failures, load.failures[:5]
        # the leaver left the ring before it was drained: no batch reached it while it refused work
        assert _failed_batches(fleet.url) == failed_before
        assert fleet.query.process.pid == query_pid and fleet.query.alive  # no query node restart
    finally:
        fleet.stop()
