"""Blame the request, not the executor: what a request does wrong is answered to it, once, and the fleet
keeps serving everyone else; and an index dropped and rebuilt under the same version number is served."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from conftest import SPREAD_WORK, Api, free_port_block

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.fleet import Fleet
from appliance.planner.plan import CONTENT_TYPE, FRAGMENT, SearchPlan, Task, encode, fragment_key
from appliance.query.dispatch import INTERNAL_TOKEN_HEADER, Dispatcher
from appliance.routing.membership import Membership


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    # A health interval long enough that a member a search marks down stays down until the test looks
    # (probes every 0.2 s, as conftest's fleets have, would hide the dispatcher's verdicts).
    root = tmp_path_factory.mktemp("blame")
    port = free_port_block(3)
    fleet = Fleet(Settings.load(env={}).replace(data=str(root / "data"), port=port, executors=2,
                                                executor_base_port=port + 1, health_interval=3.0,
                                                log_level="warning", **SPREAD_WORK), log_dir=root / "logs")
    fleet.start()
    api = Api(fleet.url, fleet.api_key)
    rng = np.random.default_rng(5)
    for name in ("bad", "good"):
        api.create(name, 8, "l2", {"s": "string", "n": "int64"})
        for start in range(0, 400, 100):  # 4 fragments: both executors get tasks
            api.insert(name, [{"vector": rng.normal(size=8).tolist(), "s": f"s{start + i}", "n": start + i}
                              for i in range(100)])
    yield fleet
    fleet.stop()


def ring(fleet) -> dict:
    return requests.get(f"{fleet.url}/admin/ring", headers={"x-api-key": fleet.api_key}, timeout=30).json()


def executor_batch(fleet, node: str, header: dict, queries: np.ndarray) -> requests.Response:
    return requests.post(f"{node}/internal/v1/search", data=encode(header, [queries]), timeout=60,
                         headers={INTERNAL_TOKEN_HEADER: fleet.settings.internal_token,
                                  "content-type": CONTENT_TYPE})


def test_request_errors_leave_every_executor_routed_to(fleet) -> None:
    api = Api(fleet.url, fleet.api_key)
    vector = np.ones(8).tolist()
    # filters that fail only while running on the executors' data, over an exact (fragment) plan
    for predicate in ("regexp_match(s, '(')", "cast(s as int) = 1", "n / 0 > 1", "arrow_cast(s, 'Int32') = 1"):
        resp = api.post("/api/v1/tables/bad/search", {"vector": vector, "k": 5, "filter": predicate})
        assert resp.status_code in (400, 500), resp.text  # never 503: no executor is taken out
        state = ring(fleet)
        assert len(state["live"]) == 2, (predicate, resp.status_code, resp.text, state)
        # another table is searched at once, by both executors
        assert len(api.search("good", vector, k=5)) == 5
    # a task batch no executor should run: each executor refuses it with a 4xx naming the bound
    snapshot_version = api.get("/api/v1/tables/bad").json()["version"]
    task = Task(FRAGMENT, fragment_key("bad", 0), "bad", snapshot_version, fragment_id=0).to_json()
    one = np.ones((1, 8), np.float32)
    for node in fleet.settings.executor_urls.split(","):
        for header, bound in (({"tasks": [task], "k": 10**12, "metric": "l2"}, "k"),
                              ({"tasks": [task] * 1_000_001, "k": 10, "metric": "l2"}, "tasks per batch"),
                              ({"tasks": [task], "k": 10, "metric": "nope"}, None)):
            resp = executor_batch(fleet, node, header, one)
            assert resp.status_code == 400, resp.text
            if bound:
                assert resp.json()["code"] == "limit_exceeded" and bound in resp.json()["error"], resp.text
        big = np.ones((1001, 8), np.float32)
        resp = executor_batch(fleet, node, {"tasks": [task], "k": 40_000, "metric": "l2"}, big)
        assert resp.status_code == 400 and "query vectors x k" in resp.json()["error"], resp.text
    assert len(ring(fleet)["live"]) == 2
    assert len(api.search("good", vector, k=5)) == 5


def test_the_dispatcher_answers_what_executors_refuse_and_marks_none_down(fleet) -> None:
    """A plan the executors refuse (here a k no executor may allocate for, as an unbounded refine_factor
    made, issue 17 item 1) is the request's fault: a 4xx, sent once, and every member stays routed to."""
    api = Api(fleet.url, fleet.api_key)
    version = api.get("/api/v1/tables/bad").json()["version"]
    nodes = fleet.settings.executor_urls.split(",")
    membership = Membership(nodes, interval=3600)
    membership.start()
    dispatcher = Dispatcher(membership, fleet.settings.internal_token, timeout=30, eps=0.25)
    tasks = [Task(FRAGMENT, fragment_key("bad", f), "bad", version, fragment_id=f) for f in range(4)]
    plan = SearchPlan("bad", version, "l2", 5, None, "exact", tasks, fetch_k=10**9)
    try:
        for _ in range(3):
            with pytest.raises(ApplianceError) as caught:
                dispatcher.search(plan, np.ones((1, 8), np.float32))
            assert caught.value.status == 400 and caught.value.code == "limit_exceeded", caught.value.to_json()
            assert membership.down() == set()
        found = dispatcher.search(SearchPlan("bad", version, "l2", 5, None, "exact", tasks, fetch_k=5),
                                  np.ones((1, 8), np.float32))
        assert len(found.ids[0]) == 5
    finally:
        membership.stop()


def executor_tasks(node: str) -> float:
    text = requests.get(f"{node}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("appliance_executor_tasks_total{"))


def test_an_index_dropped_and_rebuilt_under_the_same_version_is_searched(fleet) -> None:
    """Issue 17 item 4: index versions restarted at 1 once an index was dropped, and executors kept the
    manifest of the old version 1, whose objects were gone: every search probing a partition they had not
    cached answered 500 (CorruptIndexObject, rendered without a log line) on both executors, which the
    dispatcher marked down, so every later search got 503 while the probes said both were live."""
    api = Api(fleet.url, fleet.api_key)
    rng = np.random.default_rng(11)
    api.create("rebuilt", 8, "l2", {"n": "int64"})
    base = rng.normal(size=(800, 8)).astype(np.float32)
    for start in range(0, 800, 200):
        api.insert("rebuilt", [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(base[start:start + 200])])
    first = api.post("/api/v1/tables/rebuilt/index", {"nlist": 16, "nprobes": 1})
    assert first.status_code == 201, first.text
    # both executors read the manifest of this index version, and cache only the partitions they scanned
    nodes = fleet.settings.executor_urls.split(",")
    before = {node: executor_tasks(node) for node in nodes}
    for i in range(40):
        api.search("rebuilt", base[i], k=3)
        if all(executor_tasks(node) > before[node] for node in nodes):
            break
    assert all(executor_tasks(node) > before[node] for node in nodes)
    resp = api.post("/v1/table/rebuilt/index/vector_idx/drop/", {})
    assert resp.status_code == 200, resp.text
    again = api.post("/api/v1/tables/rebuilt/index", {"nlist": 16, "nprobes": 16})
    assert again.status_code == 201, again.text
    for i in (7, 300, 650):
        resp = api.post("/api/v1/tables/rebuilt/search", {"vector": base[i].tolist(), "k": 3, "nprobes": 16})
        assert resp.status_code == 200, resp.text
        assert resp.json()["results"][0]["n"] == i
    assert len(ring(fleet)["live"]) == 2
