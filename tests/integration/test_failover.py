"""Executors are interchangeable: kill -9 one mid-run and every query is still answered, exactly."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import requests
from conftest import SPREAD_WORK, Api, SearchLoad, start_fleet


def test_kill_one_executor_mid_run(tmp_path) -> None:
    fleet = start_fleet(tmp_path / "data", tmp_path / "logs", executors=3, **SPREAD_WORK)
    try:
        api = Api(fleet.url, fleet.api_key)
        rng = np.random.default_rng(3)
        base = rng.normal(size=(900, 16)).astype(np.float32)
        api.create("ha", 16, "l2", {"n": "int64"})
        for start in range(0, 900, 100):  # 9 fragments spread over 3 executors
            api.insert("ha", [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(base[start:start + 100])])
        queries = rng.normal(size=(20, 16)).astype(np.float32)
        expected = [np.argsort(((base - q) ** 2).sum(1), kind="stable")[:10].tolist() for q in queries]

        with SearchLoad(fleet.url, fleet.api_key, "ha", queries, expected, clients=3) as load:
            time.sleep(1.0)
            victim = fleet.executors[1]
            # The whole node dies at once (master and worker), as when its host or container is lost.
            os.killpg(victim.process.pid, signal.SIGKILL)
            time.sleep(2.0)

        assert not load.failures, load.failures[:5]
        assert load.answered > 20
        ring = requests.get(f"{fleet.url}/admin/ring", headers={"x-api-key": fleet.api_key}).json()
        assert victim.url not in ring["live"]
    finally:
        fleet.stop()
