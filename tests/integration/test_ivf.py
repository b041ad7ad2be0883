"""IVF search through the real fleet on debian-minilm: recall, freshness, deletions, filters, plans."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
import requests
from conftest import SHARED_DATA, metric_value

from appliance.storage.schema import vector_type

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "base.npy").exists(), reason=f"{SHARED_DATA} is not present"),
]
QUERIES = 200


@pytest.fixture(scope="module")
def minilm(api):
    base = np.load(SHARED_DATA / "base.npy")
    queries = np.load(SHARED_DATA / "dev_queries.npy")[:QUERIES]
    truth = np.load(SHARED_DATA / "dev_gt_ids.npy")[:QUERIES, :10]
    api.create("minilm", base.shape[1], "cosine", {"row": "int64", "bucket": "int64"})
    for start in range(0, len(base), 16384):
        chunk = base[start:start + 16384]
        api.insert_arrow("minilm", pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), base.shape[1]).cast(
                vector_type(base.shape[1])),
            "row": np.arange(start, start + len(chunk)),
            "bucket": np.arange(start, start + len(chunk)) % 100,
        }))
    return base, queries, truth


def recall(api, table: str, queries: np.ndarray, truth: np.ndarray, **params) -> float:
    resp = api.post(f"/api/v1/tables/{table}/search", {"vectors": queries.tolist(), "k": 10, "columns": ["row"],
                                                       **params})
    assert resp.status_code == 200, resp.text
    got = [[r["row"] for r in rows] for rows in resp.json()["results"]]
    return float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth.tolist(), strict=True)]))


def build(api, table: str, **params) -> dict:
    resp = api.post(f"/api/v1/tables/{table}/index", params)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_flat_ivf_recall_at_default_nprobes(api, minilm) -> None:
    base, queries, truth = minilm
    info = build(api, "minilm", codec="flat")
    assert info["indexed_rows"] == len(base)
    plan = api.post("/api/v1/tables/minilm/explain", {"vector": queries[0].tolist(), "k": 10}).json()
    assert plan["strategy"] == "ivf" and plan["nprobes"] == info["params"]["nprobes"]
    assert recall(api, "minilm", queries, truth) >= 0.95
    assert recall(api, "minilm", queries, truth, bypass_vector_index=True) == 1.0


def test_a_batch_answers_as_its_queries_one_by_one(api, minilm) -> None:
    """Each query of a batch scans only its own nprobes partitions, so batching (one request, one matrix
    product per partition) cannot quietly raise recall above what single queries get."""
    _, queries, _ = minilm
    batch = api.post("/api/v1/tables/minilm/search", {"vectors": queries[:20].tolist(), "k": 10, "nprobes": 4,
                                                      "columns": ["row"]}).json()["results"]
    singles = [api.search("minilm", q, k=10, nprobes=4, columns=["row"]) for q in queries[:20]]
    assert [[r["row"] for r in rows] for rows in batch] == [[r["row"] for r in rows] for rows in singles]


def test_pq_with_refine_recall(api, minilm) -> None:
    _, queries, truth = minilm
    build(api, "minilm", codec="pq")
    assert recall(api, "minilm", queries, truth) >= 0.95  # PQ defaults to refine_factor 10


def test_rows_inserted_after_the_build_are_found(api, minilm) -> None:
    base, _, _ = minilm
    probe = -base[0]  # far from everything indexed
    api.insert("minilm", [{"vector": probe.tolist(), "row": 10**6, "bucket": 1}])
    plan = api.post("/api/v1/tables/minilm/explain", {"vector": probe.tolist()}).json()
    assert any("/fragment/" in t for t in plan["tasks"])  # the unindexed fragment is flat-scanned
    assert api.search("minilm", probe, k=1)[0]["row"] == 10**6
    status = api.get("/api/v1/tables/minilm/index").json()
    assert status["unindexed_rows"] == 1


def test_deleted_rows_never_come_back(api, minilm) -> None:
    _, queries, truth = minilm
    victims = sorted({int(r) for r in truth[:20, :3].ravel()})
    resp = api.post("/api/v1/tables/minilm/delete", {"filter": f"row IN ({', '.join(map(str, victims))})"})
    assert resp.json()["deleted"] == len(victims)
    resp = api.post("/api/v1/tables/minilm/search", {"vectors": queries[:20].tolist(), "k": 10, "columns": ["row"]})
    returned = {r["row"] for rows in resp.json()["results"] for r in rows}
    assert returned.isdisjoint(victims)
    assert all(len(rows) == 10 for rows in resp.json()["results"])


def test_filtered_search_returns_only_matching_rows(api, minilm) -> None:
    base, queries, _ = minilm
    selective = "bucket = 7"  # 1% of rows: prefilter, exact
    plan = api.post("/api/v1/tables/minilm/explain", {"vector": queries[0].tolist(), "filter": selective}).json()
    assert plan["strategy"] == "exact-prefilter"
    for q in queries[:10]:
        rows = api.search("minilm", q, k=10, filter=selective, columns=["row", "bucket"])
        assert all(r["bucket"] == 7 for r in rows)
        exact = api.search("minilm", q, k=10, filter=selective, columns=["row"], bypass_vector_index=True)
        assert [r["row"] for r in rows] == [r["row"] for r in exact]
    broad = "bucket < 50"  # half the rows: post-filter on the IVF candidates
    plan = api.post("/api/v1/tables/minilm/explain", {"vector": queries[0].tolist(), "filter": broad}).json()
    assert plan["strategy"] == "ivf-postfilter"
    for q in queries[:10]:
        rows = api.search("minilm", q, k=10, filter=broad, columns=["bucket"])
        assert len(rows) == 10 and all(r["bucket"] < 50 for r in rows)


def test_a_warm_search_reads_nothing_through_lance_on_the_query_node(fleet, minilm, monkeypatch) -> None:
    """The executors finish an IVF search (rows deleted since the build dropped, the post-filter, the
    refine) and return the payload columns, from their cache: a query node (here, in the test's process,
    over the fleet's executors) searching warm makes no Lance read, and answers as before."""
    import lance
    from lance.fragment import LanceFragment

    from appliance.index import IndexStore
    from appliance.query.catalog import IndexCatalog
    from appliance.query.dispatch import Dispatcher
    from appliance.query.request import search_request
    from appliance.query.service import QueryService
    from appliance.routing.membership import Membership
    from appliance.storage import TableStore

    base, queries, _ = minilm
    root = fleet.settings.storage_root()
    membership = Membership([e.url for e in fleet.executors], interval=0.5)
    membership.start()
    try:
        service = QueryService(TableStore(root, version_check_seconds=3600),
                               Dispatcher(membership, fleet.settings.internal_token, 60, 0.25),
                               IndexCatalog(IndexStore(root)))
        request = search_request("minilm", queries[:5], 10, 1000, filter="bucket < 50", columns=["row", "bucket"],
                                 refine_factor=3)  # whatever the codec: the exact vectors come from the cache
        minilm_table = service.table("minilm")
        first = minilm_table.search(request)
        plan = first.plan
        assert plan.strategy == "ivf-postfilter" and plan.refine_factor > 0 and plan.verify_alive

        def no_reads(*args: object, **kwargs: object) -> None:
            raise AssertionError("the query node read rows through Lance")

        for owner in (lance.LanceDataset, LanceFragment):
            for name in ("to_table", "scanner", "take", "_take_rows", "count_rows"):
                if hasattr(owner, name):
                    monkeypatch.setattr(owner, name, no_reads)
        again = minilm_table.search(request)
    finally:
        membership.stop()
    assert again.per_query(5) == first.per_query(5)
    for q, rows in zip(queries[:5], first.per_query(5), strict=True):
        assert len(rows) == 10 and all(r["bucket"] < 50 and r["bucket"] == r["row"] % 100 for r in rows)
        exact = 1 - base[[r["row"] for r in rows]] @ q / np.linalg.norm(base[[r["row"] for r in rows]], axis=1) / (
            np.linalg.norm(q))
        np.testing.assert_allclose([r["_distance"] for r in rows], exact, atol=1e-4)  # refined: exact distances


def test_concurrent_searches_batched_together_answer_as_one_by_one(api, minilm) -> None:
    """The query node runs concurrent searches of one shape as one batch (appliance/query/service.py):
    each must still get exactly its own answer, in its own response."""
    _, queries, _ = minilm
    chosen = queries[:64]

    def rows(q: np.ndarray) -> list[int]:
        resp = requests.post(f"{api.url}/api/v1/tables/minilm/search", headers={"x-api-key": api.key}, timeout=60,
                             json={"vector": q.tolist(), "k": 10, "nprobes": 8, "columns": ["row"]})
        assert resp.status_code == 200, resp.text
        return [r["row"] for r in resp.json()["results"]]

    singles = [rows(q) for q in chosen]
    before = api.get("/metrics").text
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(rows, chosen))
    after = api.get("/metrics").text
    assert together == singles

    def grown(name: str) -> float:
        return metric_value(after, name) - metric_value(before, name)

    assert grown("appliance_search_batched_total") == len(chosen)
    assert grown("appliance_search_batches_total") < len(chosen)  # 16 clients at once: some shared a batch


def test_graph_codec_search_honours_ef(api, minilm) -> None:
    """hnsw_flat: one HNSW graph per partition, searched by the executors with the client's ef (a wider
    search finds more of the true top 10), raised to the ef the build measured reaching the table's target;
    the plan shows the ef it sends, the index's default (at least GRAPH_EF_FLOOR) when the client sends none."""
    base, queries, truth = minilm
    resp = requests.post(f"{api.url}/api/v1/tables/minilm/index", json={"codec": "hnsw_flat"}, timeout=600,
                         headers={"x-api-key": api.key})  # a 62k-row graph: tens of seconds on a busy machine
    assert resp.status_code == 201, resp.text
    info = resp.json()
    rows = api.get("/api/v1/tables/minilm").json()["rows"]  # the tests before added and deleted some
    assert info["codec"] == "hnsw_flat" and info["indexed_rows"] == rows
    assert info["nlist"] == 1  # a graph codec's partitions hold up to GRAPH_PARTITION_ROWS rows by default
    explain = "/api/v1/tables/minilm/explain"
    floor = info["recall"]["min_ef"]
    assert info["params"]["ef"] >= 128 and 16 <= floor <= 128  # debian-minilm's rows: 0.975 at ef ~48
    assert api.post(explain, {"vector": queries[0].tolist(), "k": 10}).json()["ef"] == info["params"]["ef"]
    assert api.post(explain, {"vector": queries[0].tolist(), "k": 10, "ef": 10}).json()["ef"] == floor
    assert api.post(explain, {"vector": queries[0].tolist(), "k": 10, "ef": 300}).json()["ef"] == 300
    narrow = recall(api, "minilm", queries, truth, ef=10)
    wide = recall(api, "minilm", queries, truth, ef=300)
    assert wide >= 0.95 and wide > narrow + 0.01, (narrow, wide)
    for bad in (-1, 5000, "wide"):
        resp = api.post("/api/v1/tables/minilm/search", {"vector": queries[0].tolist(), "ef": bad})
        assert resp.status_code in (400, 413) and "ef" in resp.json()["error"], resp.text


def _client_table(fleet, name: str, dim: int, seed: int):
    """A 600-row table made through the LanceDB client, 10 queries, and each query's exact top 10 (l2)."""
    import lancedb

    rng = np.random.default_rng(seed)
    base = rng.normal(size=(600, dim)).astype(np.float32)
    db = lancedb.connect("db://appliance", api_key=fleet.api_key, host_override=fleet.url)
    table = db.create_table(name, data=[{"vector": v.tolist(), "id": i} for i, v in enumerate(base)])
    queries = rng.normal(size=(10, dim)).astype(np.float32)
    exact = [np.argsort(((base - q) ** 2).sum(1), kind="stable")[:10].tolist() for q in queries]
    return table, queries, exact


def test_lancedb_client_builds_and_searches_ivf_hnsw(fleet) -> None:
    """The LanceDB client's create_index(index_type="IVF_HNSW_SQ" / "IVF_HNSW_FLAT") builds the graph
    codecs, list_indices names them back, and searches with the client's nprobes and ef find the exact top 10
    (hnsw_flat) or nearly (hnsw_sq's 8-bit codes)."""
    table, queries, exact = _client_table(fleet, "graphs", 8, seed=3)
    for index_type, codec in (("IVF_HNSW_SQ", "hnsw_sq"), ("IVF_HNSW_FLAT", "hnsw_flat")):
        table.create_index(metric="l2", vector_column_name="vector", index_type=index_type, num_partitions=2)
        assert [i.name for i in table.list_indices()] == ["vector_idx"]
        assert table.index_stats("vector_idx").index_type == index_type
        got = [table.search(q).nprobes(2).ef(600).limit(10).to_arrow().column("id").to_pylist() for q in queries]
        hits = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
        assert hits == 1.0 if codec == "hnsw_flat" else hits >= 0.9, (index_type, hits)


def test_lancedb_client_ivf_pq_with_4_bits_builds_the_fast_scan_codec(fleet) -> None:
    """create_index(index_type="IVF_PQ", num_bits=4) builds codec pq4 (faiss fast-scan); 8 bits, pq."""
    table, queries, exact = _client_table(fleet, "pq_bits", 16, seed=4)
    api = requests.Session()
    api.headers["x-api-key"] = fleet.api_key
    for bits, codec in ((4, "pq4"), (8, "pq")):
        table.create_index(metric="l2", vector_column_name="vector", index_type="IVF_PQ", num_partitions=2,
                           num_sub_vectors=8, num_bits=bits)
        assert api.get(f"{fleet.url}/api/v1/tables/pq_bits/index", timeout=60).json()["index"]["codec"] == codec
        assert table.index_stats("vector_idx").index_type == "IVF_PQ"
        got = [table.search(q).nprobes(2).refine_factor(10).limit(10).to_arrow().column("id").to_pylist()
               for q in queries]
        hits = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
        assert hits >= 0.9, (bits, hits)
