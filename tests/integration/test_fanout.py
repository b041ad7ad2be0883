"""A search fanned out over several executors answers exactly as its queries would one by one.

Two executors, routing groups of 16 KiB and `fanout_min_bytes` 0, so an IVF plan's probed partitions spread
over many groups and both executors, each executor scanning each of its partitions only for the queries of
the batch that probe it (the batch's `probes`), plus the unindexed tail's fragment tasks; over Arrow Flight.
A batch request, and concurrent single requests coalesced into batches, must each answer as the same
queries sent one at a time alone, rows and distances, with and without a post-filter."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pyarrow as pa
import pytest
from conftest import Api, free_port_block

from appliance.config import Settings
from appliance.fleet import Fleet
from appliance.storage.schema import vector_type

DIM = 16
ROWS = 6000
TAIL = 40  # rows inserted after the build: fragment tasks beside the partition tasks


def table(vectors: np.ndarray, start: int) -> pa.Table:
    return pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(vector_type(DIM)),
        "n": pa.array(np.arange(start, start + len(vectors)), pa.int64())})


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fanout")
    port = free_port_block(3)
    fleet = Fleet(Settings.load(env={}).replace(
        data=str(root / "data"), port=port, executors=2, executor_base_port=port + 1, log_level="warning",
        partition_group_bytes=16 * 2**10, fanout_min_bytes=0,
        # nothing changes the plans meanwhile: the recall monitor would widen them, an indexer index the tail
        recall_sample_rate=0.0, indexers=0), log_dir=root / "logs")
    fleet.start()
    api = Api(fleet.url, fleet.api_key)
    # no cluster structure, and a low recall target: each query's 4 partitions miss many of its neighbours,
    # so a query that scanned the partitions other queries of its batch probe would answer better
    vectors = np.random.default_rng(11).normal(size=(ROWS, DIM)).astype(np.float32)
    api.create("spread", DIM, "l2", {"n": "int64"})
    for start in range(0, ROWS, 2000):
        api.insert_arrow("spread", table(vectors[start:start + 2000], start))
    resp = api.post("/api/v1/tables/spread/index", {"codec": "flat", "nlist": 48, "nprobes": 4, "target_recall": 0.5})
    assert resp.status_code == 201, resp.text
    api.insert_arrow("spread", table(vectors[:TAIL] + 0.01, ROWS))  # near indexed rows: they compete
    yield api, vectors
    fleet.stop()


def rows(results: list[dict]) -> list[tuple[int, float]]:
    return [(r["n"], r["_distance"]) for r in results]


def same(got: list[list[tuple[int, float]]], expected: list[list[tuple[int, float]]]) -> None:
    """The same rows in the same order; distances equal up to float32 rounding (a batch's matrix products
    add up in another order than a single query's)."""
    assert [[n for n, _ in r] for r in got] == [[n for n, _ in r] for r in expected]
    np.testing.assert_allclose([d for r in got for _, d in r], [d for r in expected for _, d in r], rtol=1e-5,
                               atol=1e-3)  # l2 as |q|² + |x|² - 2q·x: a near-zero distance keeps an absolute error


@pytest.mark.parametrize("filter", [None, "n % 3 = 0"])
def test_a_fanned_out_batch_answers_as_its_queries_one_by_one(api, filter: str | None) -> None:
    api, vectors = api
    # 16 queries: under faiss's BLAS threshold (20), a batch's probe computes each query's centroid distances
    # exactly as a single query's, so a near tie between two centroids cannot probe differently
    queries = vectors[:: ROWS // 16][:16] + 0.05
    body = {"k": 10, "columns": ["n"], "filter": filter}
    plan = api.post("/api/v1/tables/spread/explain", {**body, "vectors": queries.tolist()}).json()
    assert plan["strategy"].startswith("ivf") and plan["fanout"] and plan["executors"] == 2, plan
    assert plan["nprobes"] < 10 and len(plan["partitions_probed"]) > 20  # each query its few, the batch many
    assert len(plan["groups"]) > 2 and any("/fragment/" in t for t in plan["tasks"])
    alone = [rows(api.post("/api/v1/tables/spread/search", {**body, "vector": q.tolist()}).json()["results"])
             for q in queries]
    batch = api.post("/api/v1/tables/spread/search", {**body, "vectors": queries.tolist()}).json()["results"]
    same([rows(r) for r in batch], alone)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # coalesced into batches by the query node
        together = list(pool.map(lambda q: rows(api.post("/api/v1/tables/spread/search", {
            **body, "vector": q.tolist()}).json()["results"]), queries))
    same(together, alone)
