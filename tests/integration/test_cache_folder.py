"""The NVMe tier of a running executor whose cache folder is emptied under it (`rm -rf cache_dir/*`): it
makes the folder again and keeps caching, without a restart, and says so in GET /admin/cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import Api, start_fleet

DIM = 8


def rows(n: int, start: int) -> list[dict]:
    vectors = np.random.default_rng(start).standard_normal((n, DIM))
    return [{"vector": v.tolist(), "row": start + i} for i, v in enumerate(vectors)]


def nvme(api: Api) -> dict:
    resp = api.get("/admin/cache")
    assert resp.status_code == 200, resp.text
    (executor,) = resp.json()["executors"]
    return executor["stats"]["nvme"]


def test_an_emptied_cache_folder_is_made_again_while_the_executor_runs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fleet = start_fleet(tmp_path / "data", tmp_path / "logs", executors=1, cache_dir=str(cache),
                        cache_ram_bytes=1)  # nothing fits in RAM: every fragment read goes through NVMe
    try:
        api = Api(fleet.url, fleet.api_key)
        api.create("t", DIM, "l2", {"row": "int64"})
        api.insert("t", rows(200, 0))
        query = np.ones(DIM)
        first = api.search("t", query, k=5, columns=["row"])
        assert nvme(api)["entries"] > 0
        for child in cache.iterdir():  # the operator's rm -rf cache_dir/*: the executor's folder goes
            shutil.rmtree(child)
        api.insert("t", rows(200, 200))  # a new fragment: a new cache entry to write
        second = api.search("t", query, k=5, columns=["row"])
        stats = nvme(api)
        files = [p for p in cache.rglob("*") if p.is_file() and p.parent.name != "tmp" and p.name != ".lock"]
        assert len(files) == stats["entries"] >= 2, "both fragments are cached again"
        assert stats.get("recreated") == 1 and stats["write_errors"] == 0, stats
        assert api.search("t", query, k=5, columns=["row"]) == second
        assert nvme(api)["hits"] > stats["hits"]  # read back from the recreated folder
        every = np.array([r["vector"] for r in rows(200, 0) + rows(200, 200)])
        exact = np.argsort(((every - query) ** 2).sum(axis=1), kind="stable")[:5].tolist()
        assert [r["row"] for r in second] == exact and len(first) == 5
    finally:
        fleet.stop()
