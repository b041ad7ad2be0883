"""Executors are interchangeable: kill -9 one mid-run and every query is still answered, exactly."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import requests
from conftest import Api, start_fleet


def test_kill_one_executor_mid_run(tmp_path) -> None:
    fleet = start_fleet(tmp_path / "data", tmp_path / "logs", executors=3)
    try:
        api = Api(fleet.url, fleet.api_key)
        rng = np.random.default_rng(3)
        base = rng.normal(size=(900, 16)).astype(np.float32)
        api.create("ha", 16, "l2", {"n": "int64"})
        for start in range(0, 900, 100):  # 9 fragments spread over 3 executors
            api.insert("ha", [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(base[start:start + 100])])
        queries = rng.normal(size=(20, 16)).astype(np.float32)
        expected = [np.argsort(((base - q) ** 2).sum(1), kind="stable")[:10].tolist() for q in queries]

        failures: list[str] = []
        answered = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal answered
            session = requests.Session()
            session.headers["x-api-key"] = fleet.api_key
            i = 0
            while not stop.is_set():
                q = i % len(queries)
                resp = session.post(f"{fleet.url}/api/v1/tables/ha/search",
                                    json={"vector": queries[q].tolist(), "k": 10}, timeout=30)
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {resp.text}")
                elif [r["n"] for r in resp.json()["results"]] != expected[q]:
                    failures.append(f"wrong answer for query {q}")
                answered += 1
                i += 1

        clients = [threading.Thread(target=load) for _ in range(3)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        victim = fleet.executors[1]
        # The whole node dies at once (master and worker), as when its host or container is lost.
        os.killpg(victim.process.pid, signal.SIGKILL)
        time.sleep(2.0)
        stop.set()
        for c in clients:
            c.join()

        assert not failures, failures[:5]
        assert answered > 20
        ring = requests.get(f"{fleet.url}/admin/ring", headers={"x-api-key": fleet.api_key}).json()
        assert victim.url not in ring["live"]
    finally:
        fleet.stop()
