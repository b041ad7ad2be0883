"""Observability and admin access over a real fleet: Prometheus /metrics on every node, one JSON log line per
request whose request id follows the request to the executors, the admin key, and /openapi.json."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests
from conftest import Api, free_port_block, metric_value

from appliance.config import Settings
from appliance.fleet import Fleet
from appliance.query.app import create_app

ADMIN_KEY = "admin-" + "x" * 20


@pytest.fixture(scope="module")
def obs_fleet(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("obs")
    port = free_port_block(3)
    settings = Settings.load(env={}).replace(data=str(root / "data"), port=port, executors=2,
                                             executor_base_port=port + 1, health_interval=0.2, log_level="info",
                                             admin_key=ADMIN_KEY)
    fleet = Fleet(settings, log_dir=root / "logs")
    fleet.start()
    fleet.log_dir = root / "logs"
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def obs_api(obs_fleet) -> Api:
    api = Api(obs_fleet.url, obs_fleet.api_key)
    api.create("obs", 3, "l2", {"n": "int64"})
    api.insert("obs", [{"vector": [float(i), 0.0, 1.0], "n": i} for i in range(20)])
    return api


def test_index_build_durations(obs_fleet, obs_api) -> None:
    resp = obs_api.post("/api/v1/tables/obs/index", {"codec": "flat", "nlist": 2})
    assert resp.status_code == 201, resp.text
    deadline = time.monotonic() + 15  # the figures are re-read at most every 10 s (first here: at once)
    value = 0.0
    while time.monotonic() < deadline:
        text = requests.get(obs_fleet.url + "/metrics").text
        value = metric_value(text, "appliance_index_build_seconds", table="obs")
        if value > 0:
            break
        time.sleep(1)
    assert value == pytest.approx(resp.json()["build_seconds"], abs=0.01)
    assert metric_value(text, "appliance_index_published_timestamp_seconds", table="obs") > 1.7e9


def test_query_node_counts_and_times_requests_per_endpoint(obs_fleet, obs_api) -> None:
    endpoint = "/api/v1/tables/<name>/search"
    before = metric_value(requests.get(obs_fleet.url + "/metrics").text, "appliance_http_requests_total",
                          endpoint=endpoint, status="200")
    for _ in range(3):
        obs_api.search("obs", [1.0, 0.0, 1.0], k=2)
    assert obs_api.post("/api/v1/tables/obs/search", {"vector": [1.0]}).status_code == 400
    text = requests.get(obs_fleet.url + "/metrics").text  # no key needed
    assert metric_value(text, "appliance_http_requests_total", endpoint=endpoint, status="200") == before + 3
    assert metric_value(text, "appliance_http_requests_total", endpoint=endpoint, status="400") >= 1
    assert metric_value(text, "appliance_http_request_seconds_count", endpoint=endpoint, method="POST") >= 4
    assert metric_value(text, "appliance_http_request_seconds_bucket", endpoint=endpoint, le="+Inf") >= 4
    assert metric_value(text, "appliance_dispatch_seconds_count", outcome="ok") >= 3
    assert "obs" not in re.findall(r'endpoint="([^"]*)"', text)  # labels are routes, never table names
    assert 'appliance_indexer_queue_events{state="ready"}' in text  # the fleet's SQLite event queue


def test_executors_report_task_latency_and_cache(obs_fleet, obs_api) -> None:
    obs_api.search("obs", [1.0, 0.0, 1.0], k=2)
    executors = [n for n in obs_fleet.nodes if n.role == "executor"]
    texts = [requests.get(n.url + "/metrics").text for n in executors]
    assert sum(metric_value(t, "appliance_executor_batch_seconds_count") for t in texts) >= 1
    assert sum(metric_value(t, "appliance_executor_tasks_total", kind=kind)  # the table has an IVF index by now
               for t in texts for kind in ("fragment", "partition")) >= 1
    assert all("appliance_cache_hits_total" in t and 'tier="nvme"' in t for t in texts)
    # the batches come over Arrow Flight, counted per status beside the HTTP control plane's requests
    assert sum(metric_value(t, "appliance_flight_batches_total", status="200") for t in texts) >= 1


def test_request_id_follows_the_request_to_the_executors(obs_fleet, obs_api) -> None:
    request_id = "trace-" + str(time.time_ns())
    resp = obs_api.http.post(obs_fleet.url + "/api/v1/tables/obs/search", json={"vector": [1, 0, 1], "k": 1},
                             headers={"x-request-id": request_id})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == request_id
    logs: Path = obs_fleet.log_dir

    def lines(node: str) -> list[dict]:
        out = []
        for line in (logs / f"{node}.log").read_text().splitlines():
            if line.startswith("{") and request_id in line:
                out.append(json.loads(line))
        return out

    deadline = time.monotonic() + 30  # access-log lines are written by a thread of their own, maybe later
    while time.monotonic() < deadline and not (lines("query-0") and lines("executor-0") + lines("executor-1")):
        time.sleep(0.1)
    [query_line] = lines("query-0")
    assert query_line["role"] == "query" and query_line["status"] == 200
    assert query_line["endpoint"] == "/api/v1/tables/<name>/search" and query_line["ms"] > 0
    executor_lines = lines("executor-0") + lines("executor-1")
    assert executor_lines and all(e["path"] == "flight:search" and e["status"] == 200 for e in executor_lines)


def test_admin_endpoints_need_the_admin_key(obs_fleet) -> None:
    url = obs_fleet.url + "/admin/ring"
    assert requests.get(url).status_code == 401
    assert requests.get(url, headers={"x-api-key": obs_fleet.api_key}).status_code == 401
    ok = requests.get(url, headers={"x-api-key": ADMIN_KEY})
    assert ok.status_code == 200 and len(ok.json()["members"]) == 2
    assert requests.get(obs_fleet.url + "/admin/cache", headers={"x-api-key": ADMIN_KEY}).status_code == 200
    # the admin key is not a data key
    data = requests.get(obs_fleet.url + "/api/v1/tables", headers={"x-api-key": ADMIN_KEY})
    assert data.status_code == 401 and data.json()["code"] == "unauthorized"


def test_openapi_lists_every_route(tmp_path) -> None:
    app = create_app(Settings.load(env={}).replace(data=str(tmp_path), internal_token="t", api_key="k",
                                                   executor_urls="http://127.0.0.1:9", log_level="warning"))
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or "<path:" in rule.rule:
            continue  # the 501 fallbacks of the LanceDB front
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {path} is not in /openapi.json"
    for ops in doc["paths"].values():
        for op in ops.values():
            assert "summary" in op and "responses" in op


def test_openapi_is_served_without_a_key(obs_fleet) -> None:
    doc = requests.get(obs_fleet.url + "/openapi.json").json()
    assert "/v1/table/{name}/query/" in doc["paths"] and "/admin/drain" in doc["paths"]
