"""A rolling upgrade of a fleet on one machine fails no query: ansible/upgrade.yml on a local fleet (each
node a separately managed process in its own folder, `process` service manager) with one query node, and
with two query nodes sharing one port (SO_REUSEPORT), each under a steady search load from client threads
that send every query to that one port, keep their connections alive and count every answer other than
200 with the right rows, and every connection error, as a failed query: nothing retries, as nothing
would in front of a single machine. And `upgrade.yml --check` reports the changes it would make without
making any.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import free_port_block, start_fleet
from test_ansible import ANSIBLE, API_KEY, BIN, NEW_VERSION, TOKEN, Balancer, health, playbook

from appliance import __version__

pytestmark = pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="ansible-core is not installed")


class Load(Balancer):
    """Client threads searching one URL with kept-alive connections and no retry: every answer other than
    200 with the right rows, and every connection error, is a failed query."""

    def __init__(self, url: str, queries: np.ndarray, expected: list[list[int]], threads: int = 3) -> None:
        super().__init__([url], queries, expected, threads)

    def _search(self, session: requests.Session, i: int, vector: np.ndarray) -> requests.Response | str:
        try:
            return session.post(f"{self.urls[0]}/api/v1/tables/docs/search", json={"vector": vector.tolist(), "k": 5},
                                timeout=60)
        except requests.RequestException as exc:
            return f"{type(exc).__name__}: {exc}"


def ctl_status(root: Path, name: str) -> str:
    return subprocess.run([str(root / name / "bin" / "appliance-ctl"), "status"], capture_output=True,
                          text=True, timeout=60).stdout.strip()


def rollout(tmp_path: Path, query_nodes: int, wheels: dict[str, Path]) -> str:
    """One fleet's install, --check and rolling upgrade under load; what it saw, or an AssertionError."""
    old, new = __version__, NEW_VERSION
    base = free_port_block(3)  # the query nodes' port, two executors (one is drained at a time)
    query_port = base
    queries_hosts = [f"query-{i}" for i in range(query_nodes)]
    outputs = {
        "query_nodes": {"value": [{"name": n, "address": "127.0.0.1", "port": query_port} for n in queries_hosts]},
        "executor_nodes": {"value": [{"name": f"executor-{i}", "address": "127.0.0.1", "port": base + 1 + i}
                                     for i in range(2)]},
        "storage_uri": {"value": str(tmp_path / "data")},
    }
    (tmp_path / "tf-outputs.json").write_text(json.dumps(outputs))
    nodes_root = tmp_path / "nodes"
    inventory = subprocess.run([sys.executable, str(ANSIBLE / "inventory" / "terraform_inventory.py"),
                                str(tmp_path / "tf-outputs.json"), "--local", str(nodes_root),
                                "--python", sys.executable], check=True, capture_output=True, text=True).stdout
    (tmp_path / "hosts.yml").write_text(inventory)
    (tmp_path / "vars.json").write_text(json.dumps({
        "common_api_key": API_KEY, "common_internal_token": TOKEN,
        "common_shared_site_packages": sysconfig.get_path("purelib"), "common_pip_extra_args": "--no-deps --no-index",
        "common_settings": {"health_interval": 0.2, "log_level": "warning", "cache_ram_bytes": 64 << 20,
                            "cache_disk_bytes": 64 << 20, "cache_dir": str(tmp_path / "cache"),
                            "query_threads": 4, "executor_threads": 4},
        "common_ready_timeout": 120, "common_stop_timeout": 60, "common_lb_interval": 0,
    }))
    url = f"http://127.0.0.1:{query_port}"
    names = [*queries_hosts, "executor-0", "executor-1"]
    try:
        site = playbook(tmp_path, "site.yml", "-e", f"common_wheel={wheels[old]}")
        assert site.returncode == 0, site.stdout[-4000:]
        assert all(ctl_status(nodes_root, n).endswith(f"release {old}") for n in names)
        pids = {n: (nodes_root / n / "run" / "appliance.pid").read_text() for n in names}

        # --check: every node would change (a release to install, the link to switch); nothing changes.
        # (Once: the two-node fleet's play is the same per node.)
        if query_nodes == 1:
            check = playbook(tmp_path, "upgrade.yml", "--check", "--diff", "-e", f"common_wheel={wheels[new]}")
            assert check.returncode == 0, check.stdout[-4000:]
            recap = check.stdout[check.stdout.index("PLAY RECAP"):]
            for name in names:
                changed = int(recap.split(name, 1)[1].split("changed=", 1)[1].split()[0])
                assert changed >= 2, recap
            for name in names:
                assert os.readlink(nodes_root / name / "current") == f"releases/{old}"
                assert not (nodes_root / name / "releases" / new).exists()
                assert not (nodes_root / name / "wheels" / wheels[new].name).exists()
                assert (nodes_root / name / "run" / "appliance.pid").read_text() == pids[name]
        assert (health(url) or {}).get("version") == old

        rng = np.random.default_rng(7)
        vectors = rng.normal(size=(300, 16)).astype(np.float32)
        session = requests.Session()
        session.headers["x-api-key"] = API_KEY
        resp = session.post(f"{url}/api/v1/tables", json={"name": "docs", "dimension": 16, "metric": "l2",
                                                           "schema": {"n": "int64"}}, timeout=60)
        assert resp.status_code == 201, resp.text
        for start in range(0, 300, 100):
            rows = [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(vectors[start:start + 100])]
            assert session.post(f"{url}/api/v1/tables/docs/rows", json={"rows": rows}, timeout=60).status_code == 200
        queries = rng.normal(size=(8, 16)).astype(np.float32)
        expected = [np.argsort(((vectors - q) ** 2).sum(1), kind="stable")[:5].tolist() for q in queries]

        with Load(url, queries, expected) as load:
            deadline = time.monotonic() + 120
            while load.answered < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            before = load.answered
            upgrade = playbook(tmp_path, "upgrade.yml", "-e", f"common_wheel={wheels[new]}")
            during = load.answered - before
            time.sleep(1.0)
        assert upgrade.returncode == 0, upgrade.stdout[-4000:]
        for name in names:
            assert ctl_status(nodes_root, name).endswith(f"release {new}"), name
            assert os.readlink(nodes_root / name / "current") == f"releases/{new}"
        assert not load.failures, (len(load.failures), load.failures[:5])
        assert during > 20
        return (f"{query_nodes} query node(s): {load.answered} queries answered, {during} during the upgrade, "
                f"{len(load.failures)} failed")
    finally:
        for name in names:
            ctl = nodes_root / name / "bin" / "appliance-ctl"
            if ctl.exists():
                subprocess.run([str(ctl), "stop"], capture_output=True, timeout=120)


CASES = (1, 2)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory: pytest.TempPathFactory, release_wheel: Callable[..., Path],
             request: pytest.FixtureRequest) -> Iterator[dict[int, Future[str]]]:
    """The fleets' rollouts (one per selected case), run at the same time, each in a thread of its own: each
    is mostly one Ansible process working node after node, so one alone leaves a core of a small machine idle.
    Each fleet has its own folders, ports and load; a case's test waits for its own rollout."""
    wheels = {v: release_wheel(v) for v in (__version__, NEW_VERSION)}  # built once, before the threads
    selected = [n for n in CASES if any(item.module is request.module and item.name.endswith(f"[{n}]")
                                        for item in request.session.items)]
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        yield {n: pool.submit(rollout, tmp_path_factory.mktemp(f"rollout-{n}"), n, wheels) for n in selected}


@pytest.mark.parametrize("query_nodes", CASES)
def test_rolling_upgrade_fails_no_query(query_nodes: int, rollouts: dict[int, Future[str]]) -> None:
    print(rollouts[query_nodes].result())  # the rollout's own AssertionError, if any, is raised here


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (/proc/net/tcp: state 0A)."""
    local = f"0100007F:{port:04X}"
    return sum(1 for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
               if line.split()[1] == local and line.split()[3] == "0A")


def test_appliance_up_runs_query_nodes_on_one_port(tmp_path: Path) -> None:
    """`appliance up` with query_nodes = 2: two query node processes, each with its own listening socket on
    the one port (SO_REUSEPORT), and the port answers."""
    fleet = start_fleet(tmp_path / "data", tmp_path / "logs", executors=1, query_nodes=2)
    try:
        assert [n.port for n in fleet.queries] == [fleet.settings.port] * 2
        assert len({n.process.pid for n in fleet.queries}) == 2 and all(n.alive for n in fleet.queries)
        assert listening_sockets(fleet.settings.port) == 2
        session = requests.Session()
        session.headers["x-api-key"] = fleet.api_key
        assert session.post(f"{fleet.url}/api/v1/tables", json={"name": "t", "dimension": 2, "metric": "l2"},
                            timeout=60).status_code == 201
        assert session.post(f"{fleet.url}/api/v1/tables/t/rows", json={"rows": [{"vector": [1.0, 0.0]}]},
                            timeout=60).status_code == 200
        for _ in range(10):
            resp = requests.post(f"{fleet.url}/api/v1/tables/t/search", json={"vector": [1.0, 0.0], "k": 1},
                                 headers={"x-api-key": fleet.api_key}, timeout=60)
            assert resp.status_code == 200 and len(resp.json()["results"]) == 1, resp.text
    finally:
        fleet.stop()
