"""Recall that holds by default, through a real fleet: the build's probe count raises the lancedb client's
nprobes 20, and the query node's recall monitor exports what it measures."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest
from conftest import Api, metric_value, start_fleet

import kernels
from appliance.storage.schema import vector_type

DIM = 32
CLIENT_NPROBES = 20  # what the lancedb client sends when the user names none (lancedb/query.py)


def clustered(n: int, seed: int, centers: np.ndarray) -> np.ndarray:
    """Clusters that overlap, as real embeddings do (tests/unit/test_recall.py: nlist/6 probes reach ~0.8)."""
    rng = np.random.default_rng(seed)
    return (centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, DIM)) * 2.5).astype(np.float32)


def indexed_table(api: Api, name: str, vectors: np.ndarray, codec: str, **params: object):
    """A table of `vectors` (column `row`: their positions) with an index of `codec` (and `params`); the
    index answer."""
    dim = vectors.shape[1]
    api.create(name, dim, "l2", {"row": "int64"})
    api.insert_arrow(name, pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim).cast(vector_type(dim)),
        "row": np.arange(len(vectors))}))
    resp = api.post(f"/api/v1/tables/{name}/index", {"codec": codec, **params})
    assert resp.status_code == 201, resp.text
    return resp


@pytest.fixture(scope="module")
def fleet_api(tmp_path_factory):
    root = tmp_path_factory.mktemp("recall")
    fleet = start_fleet(root / "data", root / "logs", executors=1, recall_sample_rate=1.0,
                        recall_sample_per_second=50.0, recall_window=20, recall_budget=1.0)
    yield Api(fleet.url, fleet.api_key)
    fleet.stop()


def test_client_default_nprobes_reach_the_target_and_the_monitor_reports_recall(fleet_api) -> None:
    api = fleet_api
    centers = np.random.default_rng(7).standard_normal((40, DIM)) * 1.2
    base = clustered(12_000, 1, centers)
    resp = indexed_table(api, "c", base, "flat")
    recall_info = resp.json()["recall"]
    assert recall_info["target_recall"] == 0.95 and recall_info["min_nprobes"] > CLIENT_NPROBES

    queries = clustered(100, 99, centers)  # unseen queries
    ids = np.arange(len(base), dtype=np.uint64)
    truth, _ = kernels.search_block(queries, base, ids, "l2", 10)
    resp = api.post("/api/v1/tables/c/search", {"vectors": queries.tolist(), "k": 10, "columns": ["row"],
                                                "nprobes": CLIENT_NPROBES})
    assert resp.status_code == 200, resp.text
    got = [[r["row"] for r in rows] for rows in resp.json()["results"]]
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth.tolist(), strict=True)])
    assert recall >= 0.95
    # the lancedb client's own path: its default nprobes is raised the same way
    plan = api.post("/v1/table/c/explain_plan/", {"query": {"vector": queries[0].tolist(), "k": 10,
                                                            "nprobes": CLIENT_NPROBES}})
    assert plan.status_code == 200, plan.text
    assert json.loads(plan.json())["nprobes"] == recall_info["min_nprobes"]

    for q in queries[:20]:  # single searches, each a candidate sample for the monitor
        api.search("c", q, k=10, nprobes=CLIENT_NPROBES)
        time.sleep(0.03)
    deadline = time.monotonic() + 60
    value = 0.0
    while time.monotonic() < deadline:
        value = metric_value(api.get("/metrics").text, "appliance_recall_at_k", table="c")
        if value > 0:
            break
        time.sleep(0.5)
    assert 0.9 <= value <= 1.0
    monitor = api.get("/api/v1/tables/c/index").json()["recall_monitor"]
    assert monitor["samples"] >= 1 and 0 < monitor["recall_at_k"] <= 1.0


def test_recall_below_target_on_live_queries_widens_the_search_until_it_holds(fleet_api) -> None:
    """Queries from another distribution than the rows (clusters the table lacks) are harder than the rows
    the build measured: a graph index at ef 40 (the user's choice here; the default is wider) answers them
    at ~0.85. The monitor measures that on live searches and raises the table's search breadth until
    recall@10 reaches the index's target."""
    api = fleet_api
    dim = 32
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((64, dim)).astype(np.float32) * 4
    base = (centers[rng.integers(0, 64, 6000)] + rng.standard_normal((6000, dim))).astype(np.float32)
    qrng = np.random.default_rng(2)
    qcenters = qrng.standard_normal((64, dim)).astype(np.float32) * 4
    queries = (qcenters[qrng.integers(0, 64, 50)] + qrng.standard_normal((50, dim))).astype(np.float32)
    indexed_table(api, "ood", base, "hnsw_flat", ef=40)
    truth, _ = kernels.search_block(queries, base, np.arange(len(base), dtype=np.uint64), "l2", 10)

    def batch_recall() -> float:
        resp = api.post("/api/v1/tables/ood/search", {"vectors": queries.tolist(), "k": 10, "columns": ["row"]})
        assert resp.status_code == 200, resp.text
        got = [[r["row"] for r in rows] for rows in resp.json()["results"]]
        return float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth.tolist(), strict=True)]))

    first = batch_recall()
    assert first < 0.95, f"the case needs a default that misses ({first})"
    recall, monitor = first, {}
    deadline = time.monotonic() + 240
    while recall < 0.95 and time.monotonic() < deadline:
        for q in queries:  # single searches, each a sample for the monitor (rate 1, at most 50 a second)
            api.search("ood", q, k=10)
            time.sleep(0.025)
        monitor = api.get("/api/v1/tables/ood/index").json()["recall_monitor"]
        recall = batch_recall()
    assert recall >= 0.95, (first, recall, monitor)
    assert monitor["breadth"] > 1.0
    plan = api.post("/api/v1/tables/ood/explain", {"vector": queries[0].tolist(), "k": 10}).json()
    assert plan["breadth"] == monitor["breadth"] and plan["ef"] > 40 and plan["target_recall"] == 0.95
