"""The executors' cache over a real fleet on debian-minilm: a second pass is served from RAM, and a RAM tier
smaller than the data still answers exactly, from NVMe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, Api, load_debian, start_fleet

from appliance import cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "base.npy").exists(), reason=f"{SHARED_DATA} is not present"),
]
QUERIES = 100


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-fleet")


@pytest.fixture(scope="module")
def loaded(root: Path) -> Iterator[Api]:
    """A fleet with default-sized caches, the base set loaded in eight 8192-row fragments."""
    fleet = start_fleet(root / "data", root / "logs", cache_dir=str(root / "cache-default"))
    api = Api(fleet.url, fleet.api_key)
    load_debian(api)
    yield api
    fleet.stop()


def one_pass(api: Api) -> list[list[int]]:
    """Each dev query as its own request, as clients send them: every pass looks up every fragment 100 times."""
    return [[r["row"] for r in api.search("debian", q, k=10, columns=["row"])]
            for q in np.load(SHARED_DATA / "dev_queries.npy")[:QUERIES]]


def recall(got: list[list[int]]) -> float:
    truth = np.load(SHARED_DATA / "dev_gt_ids.npy")[:QUERIES, :10].tolist()
    return float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)]))


def cache_stats(api: Api) -> dict:
    resp = api.get("/admin/cache")
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_second_pass_is_served_from_the_cache_with_the_same_answers(loaded: Api, capsys) -> None:
    first = one_pass(loaded)
    before = cache_stats(loaded)
    second = one_pass(loaded)
    after = cache_stats(loaded)
    assert second == first and recall(second) == 1.0
    hits = after["ram"]["hits"] - before["ram"]["hits"]
    misses = after["ram"]["misses"] - before["ram"]["misses"]
    assert hits >= 8 * QUERIES and hits / (hits + misses) >= 0.99
    assert after["storage"]["fetches"] == before["storage"]["fetches"]
    assert len(after["executors"]) == 2 and all("stats" in e for e in after["executors"])
    assert after["ram"]["bytes"] <= after["ram"]["budget"] and after["nvme"]["bytes"] <= after["nvme"]["budget"]

    assert cli.main(["cache", "--url", loaded.url, "--api-key", loaded.key]) == 0
    table = capsys.readouterr().out
    assert "fleet" in table and "nvme" in table and "hit rate" in table


def test_a_ram_tier_smaller_than_the_data_answers_exactly_from_nvme(loaded: Api, root: Path) -> None:
    small = 4 * 2**20  # a fragment is 12.6 MB: none fits, so every read after the first is an NVMe read
    fleet = start_fleet(root / "data", root / "logs-small", cache_dir=str(root / "cache-small"),
                        cache_ram_bytes=small)
    try:
        api = Api(fleet.url, fleet.api_key)
        assert recall(one_pass(api)) == 1.0
        stats = cache_stats(api)
    finally:
        fleet.stop()
    # each of the 8 fragments read from storage once for its rows (vectors), and at most once more for the
    # payload columns of the results it holds (executors cache a fragment's columns apart from its vectors)
    assert stats["nvme"]["hits"] >= 7 * QUERIES and 8 < stats["storage"]["fetches"] <= 2 * 8
    assert stats["ram"]["bytes"] <= stats["ram"]["budget"] == 2 * small
    for executor in stats["executors"]:
        nvme = executor["stats"]["nvme"]
        assert nvme["corrupt"] == 0 and nvme["read_seconds"]["count"] == nvme["hits"]
