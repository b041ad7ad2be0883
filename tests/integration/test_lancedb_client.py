"""The official `lancedb` client (remote mode) against a real local fleet: every operation of the
LanceDB-compatible front (`appliance/query/lancedb/`), checked against exact answers computed here, and
its errors surfacing as the client's normal exceptions with our message."""

from __future__ import annotations

import asyncio
import json
import re

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import requests
from conftest import exact_ids
from lancedb.index import FTS, BTree
from lancedb.remote import ClientConfig, RetryConfig
from lancedb.remote.errors import HttpError

DIM = 8
ROWS = 300


@pytest.fixture(scope="module")
def db(fleet):
    # one attempt per request, so a wrongly retryable error fails fast instead of after backoff
    config = ClientConfig(retry_config=RetryConfig(retries=1, connect_retries=1, read_retries=1))
    return lancedb.connect("db://appliance", api_key=fleet.api_key, host_override=fleet.url, client_config=config)


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return np.random.default_rng(42).normal(size=(ROWS, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def items(db, base):
    rows = [{"vector": v.tolist(), "id": i, "text": f"doc {i}", "category": "even" if i % 2 == 0 else "odd",
             "price": float(i)} for i, v in enumerate(base)]
    return db.create_table("items", data=rows)


def test_create_describe_and_count(db, items) -> None:
    assert items.count_rows() == ROWS
    assert items.count_rows("price >= 100") == ROWS - 100
    schema = items.schema
    assert schema.field("vector").type == pa.list_(pa.field("item", pa.float32()), DIM)
    assert schema.field("id").type == pa.int64() and schema.field("text").type == pa.string()
    assert items.version == 1
    assert db.open_table("items").count_rows() == ROWS


def test_create_from_schema_then_add(db) -> None:
    schema = pa.schema([pa.field("vector", pa.list_(pa.float32(), 3)), pa.field("name", pa.string())])
    table = db.create_table("from_schema", schema=schema)
    assert table.count_rows() == 0
    result = table.add([{"vector": [1, 0, 0], "name": "east"}, {"vector": [0, 1, 0], "name": "north"}])
    assert result.version == 2
    assert table.count_rows() == 2
    hits = table.search([0.9, 0.1, 0]).limit(1).to_list()
    assert hits[0]["name"] == "east" and hits[0]["_distance"] == pytest.approx(0.02, abs=1e-5)


def test_required_columns_are_enforced(db, fleet) -> None:
    schema = pa.schema([pa.field("vector", pa.list_(pa.float32(), 2)), pa.field("id", pa.int64(), nullable=False),
                        pa.field("note", pa.string())])
    table = db.create_table("required", schema=schema)
    assert table.schema.field("id").nullable is False
    rows = pa.table({"vector": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2)), "note": ["no id"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    resp = requests.post(fleet.url + "/v1/table/required/insert/", data=sink.getvalue().to_pybytes(),
                         headers={"x-api-key": fleet.api_key, "content-type": "application/vnd.apache.arrow.stream"})
    assert resp.status_code == 400 and "'id' is required" in resp.json()["error"]
    table.add([{"vector": [1.0, 2.0], "id": 1, "note": None}])
    assert table.count_rows() == 1


def test_create_modes(db) -> None:
    rows = [{"vector": [1.0, 2.0], "n": 1}]
    db.create_table("modes", data=rows)
    with pytest.raises(ValueError, match="already exists"):
        db.create_table("modes", data=rows)
    same = db.create_table("modes", data=[{"vector": [3.0, 4.0], "n": 2}], exist_ok=True)
    assert same.count_rows() == 1
    replaced = db.create_table("modes", data=[{"vector": [3.0, 4.0], "n": 2}] * 3, mode="overwrite")
    assert replaced.count_rows() == 3
    with pytest.raises(ValueError):  # Lance refuses dotted top-level names: a 400, which the client reports so
        db.create_table("dotted", data=[{"vector": [1.0, 2.0], "a.b": 1}])
    with pytest.raises(ValueError):
        db.create_table("novector", data=[{"embedding": [1.0, 2.0], "n": 1}])
    assert not {"dotted", "novector"} & set(db.list_tables().tables)


def test_list_tables_with_paging(db, items) -> None:
    for name in ("page_a", "page_b", "page_c"):
        db.create_table(name, data=[{"vector": [1.0, 0.0], "n": 1}])
    names = db.list_tables().tables
    assert {"items", "page_a", "page_b", "page_c"} <= set(names) and names == sorted(names)
    first = db.list_tables(limit=2)
    assert first.tables == names[:2] and first.page_token == names[1]
    second = db.list_tables(limit=2, page_token=first.page_token)
    assert second.tables == names[2:4]
    with pytest.warns(DeprecationWarning):
        assert db.table_names(limit=100) == names


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_vector_search_is_exact(items, base, metric: str) -> None:
    rng = np.random.default_rng(1)
    for q in rng.normal(size=(5, DIM)).astype(np.float32):
        got = items.search(q).distance_type(metric).limit(10).to_arrow()
        assert got.column("id").to_pylist() == exact_ids(base, q, metric, 10)
        assert got.column_names == ["vector", "id", "text", "category", "price", "_distance"]
        assert got.schema.field("_distance").type == pa.float32()
        dists = got.column("_distance").to_numpy()
        assert np.all(np.diff(dists) >= 0)


def test_search_filter_select_row_id_and_offset(items, base) -> None:
    q = base[7]
    mask = np.arange(ROWS) % 2 == 1
    pre = items.search(q).where("category = 'odd'", prefilter=True).select(["id", "text"]).limit(5)
    got = pre.with_row_id(True).to_arrow()
    assert got.column_names == ["id", "text", "_distance", "_rowid"]
    assert got.column("id").to_pylist() == exact_ids(base, q, "l2", 5, mask)
    assert got.column("_rowid").to_pylist() == got.column("id").to_pylist()  # rows were written in id order
    post = items.search(q).where("category = 'odd'", prefilter=False).limit(5).to_list()
    assert all(r["category"] == "odd" for r in post) and len(post) == 5
    page = items.search(q).limit(3).offset(2).to_arrow().column("id").to_pylist()
    assert page == exact_ids(base, q, "l2", 5)[2:]


def test_search_options_exact_paths(items, base) -> None:
    q = base[11]
    want = exact_ids(base, q, "l2", 10)
    assert [r["id"] for r in items.search(q).nprobes(4).refine_factor(2).limit(10).to_list()] == want
    assert [r["id"] for r in items.search(q).bypass_vector_index().limit(10).to_list()] == want
    ranged = items.search(q).distance_range(0.0, 1e-6).limit(10).to_list()
    assert [r["id"] for r in ranged] == [11]


def test_search_sql_projection(items, base) -> None:
    got = items.search(base[3]).select({"id2": "id * 2", "text": "text"}).limit(2).to_arrow()
    assert got.column_names == ["id2", "text", "_distance"]
    assert got.column("id2").to_pylist()[0] == 6
    empty = items.search(base[3]).where("id < 0").select({"id2": "id * 2"}).limit(2).to_arrow()
    assert empty.num_rows == 0 and empty.column_names == ["id2", "_distance"]
    for bad in ({"x": "nope + 1"}, {"_distance": "id"}):
        with pytest.raises(HttpError, match="400"):
            items.search(base[3]).select(bad).limit(2).to_arrow()
        with pytest.raises(HttpError, match="400"):
            items.search(base[3]).where("id < 0").select(bad).limit(2).to_arrow()


def test_plain_scans(items) -> None:
    rows = items.search().where("id < 5").select(["id", "price"]).limit(100).to_list()
    assert sorted(r["id"] for r in rows) == [0, 1, 2, 3, 4]
    assert items.head(3).num_rows == 3
    assert items.search().where("id >= 290").limit(None).to_arrow().num_rows == 10
    taken = items.take_row_ids([4, 9]).select(["id"]).to_arrow()
    assert sorted(taken.column("id").to_pylist()) == [4, 9]
    assert sorted(items.take_offsets([0, 5]).to_arrow().column("id").to_pylist()) == [0, 5]
    ordered = items.search().where("id < 10").select(["id"]).limit(3).offset(1).to_arrow()
    assert ordered.num_rows == 3


def query_requests(fleet) -> float:
    text = requests.get(fleet.url + "/metrics").text
    pattern = r'appliance_http_requests_total\{[^}]*endpoint="/v1/table/<name>/query/"[^}]*status="200"\} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


def test_multiple_query_vectors(fleet, items, base) -> None:
    before = query_requests(fleet)
    got = items.search([base[0].tolist(), base[1].tolist()]).limit(2).to_arrow()
    assert got.column("query_index").to_pylist() == [0, 0, 1, 1]
    assert got.column("id").to_pylist()[0::2] == [0, 1]
    assert query_requests(fleet) == before + 1  # phalanx-version 0.2.0: both vectors in one request


def test_add_append_and_overwrite(db) -> None:
    table = db.create_table("writes", data=[{"vector": [float(i), 1.0], "n": i} for i in range(10)])
    version = table.add([{"vector": [5.5, 1.0], "n": 100}]).version
    assert table.count_rows() == 11 and table.version == version
    assert table.search([5.5, 1.0]).limit(1).to_list()[0]["n"] == 100  # read-your-writes
    table.add([{"vector": [9.0, 9.0], "n": 7}], mode="overwrite")
    assert table.count_rows() == 1
    assert table.search([0.0, 0.0]).limit(5).to_list()[0]["n"] == 7


def test_delete_update_merge_insert(db) -> None:
    table = db.create_table("mutate", data=[{"vector": [float(i), 0.0], "id": i, "label": "old"} for i in range(20)])
    deleted = table.delete("id >= 15")
    assert deleted.num_deleted_rows == 5 and table.count_rows() == 15
    updated = table.update(where="id < 3", values={"label": "new"})
    assert updated.rows_updated == 3
    assert table.count_rows("label = 'new'") == 3
    table.update(where="id = 4", values_sql={"label": "concat(label, '!')"})
    assert table.search().where("id = 4").to_list()[0]["label"] == "old!"
    source = [{"vector": [100.0, 0.0], "id": 1, "label": "upserted"},
              {"vector": [50.0, 0.0], "id": 99, "label": "fresh"}]
    result = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(source)
    assert (result.num_updated_rows, result.num_inserted_rows, result.num_deleted_rows) == (1, 1, 0)
    assert table.count_rows() == 16
    nearest = table.search([100.0, 0.0]).limit(1).to_list()[0]
    assert (nearest["id"], nearest["label"]) == (1, "upserted")  # the upserted vector is what is searched
    cleanup = (table.merge_insert("id").when_not_matched_by_source_delete("id > 10")
               .execute([{"vector": [0.0, 0.0], "id": 0, "label": "x"}]))
    assert cleanup.num_deleted_rows == 5  # ids 11..14 and 99
    assert table.count_rows() == 11


def test_versions_checkout_and_restore(db) -> None:
    table = db.create_table("history", data=[{"vector": [1.0, 0.0], "n": 1}])
    table.add([{"vector": [0.0, 1.0], "n": 2}])
    table.add([{"vector": [1.0, 1.0], "n": 3}])
    versions = table.list_versions()
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert versions[-1]["metadata"]["total_rows"] == "3"
    table.checkout(2)
    assert table.version == 2 and table.count_rows() == 2
    assert {r["n"] for r in table.search([0.0, 1.0]).limit(5).to_list()} == {1, 2}  # searches version 2
    table.checkout_latest()
    assert table.count_rows() == 3
    table.tags.create("two", 2)
    assert table.tags.list()["two"]["version"] == 2
    table.checkout("two")
    assert table.count_rows() == 2
    table.checkout_latest()
    table.tags.update("two", 3)
    assert table.tags.get_version("two") == 3
    with pytest.raises(HttpError, match="tag operation failed"):
        table.tags.create("bad", 99)
    table.tags.delete("two")
    assert table.tags.list() == {}
    table.restore(1)
    assert table.count_rows() == 1 and table.version == 4


def test_stats_and_scalar_and_fts_indices(db) -> None:
    table = db.create_table("scalars", data=[{"vector": [float(i), 0.0], "id": i, "text": f"hello number {i}"}
                                             for i in range(50)])
    stats = table.stats()
    assert stats["num_rows"] == 50 and stats["fragment_stats"]["num_fragments"] == 1
    table.create_index("id", config=BTree())
    table.create_index("text", config=FTS())
    indices = {i.name: i for i in table.list_indices()}
    assert indices["id_idx"].index_type == "BTree" and indices["text_idx"].index_type == "FTS"
    assert table.index_stats("id_idx").num_indexed_rows == 50
    assert table.index_stats("missing_idx") is None
    assert table.count_rows("id < 10") == 10  # filters still work with the scalar index
    hits = table.search("number 7", query_type="fts").limit(5).to_list()
    assert hits and hits[0]["id"] == 7 and "_score" in hits[0]
    filtered = table.search("number 7", query_type="fts").where("id > 40").limit(5).to_list()
    assert len(filtered) == 5 and all(r["id"] > 40 for r in filtered)  # "number" matches every row
    hybrid = table.search(query_type="hybrid").vector([7.2, 0.0]).text("number 7").limit(3).to_list()
    assert hybrid[0]["id"] == 7 and "_relevance_score" in hybrid[0]  # first in both legs
    table.drop_index("id_idx")
    assert "id_idx" not in {i.name for i in table.list_indices()}
    with pytest.raises(RuntimeError, match="not found"):
        table.drop_index("id_idx")


def test_vector_index_lifecycle(db, base) -> None:
    table = db.create_table("indexed", data=[{"vector": v.tolist(), "id": i} for i, v in enumerate(base)])
    table.create_index(metric="l2", vector_column_name="vector", index_type="IVF_FLAT", num_partitions=4)
    [index] = [i for i in table.list_indices() if i.name == "vector_idx"]
    assert index.index_type == "IvfFlat"
    stats = table.index_stats("vector_idx")
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (ROWS, 0)
    q = base[5]
    hits = table.search(q).nprobes(4).limit(10).to_arrow().column("id").to_pylist()
    assert hits == exact_ids(base, q, "l2", 10)  # all 4 partitions probed: exact
    assert '"strategy": "ivf"' in table.search(q).nprobes(4).limit(10).explain_plan()
    assert '"strategy": "exact"' in table.search(q).bypass_vector_index().limit(10).explain_plan()
    assert len(table.search(q).nprobes(1).refine_factor(2).limit(10).to_list()) == 10
    with pytest.raises(HttpError, match="already exists"):
        table.create_index(metric="l2", vector_column_name="vector", index_type="IVF_FLAT", replace=False)
    # an upsert that changes vectors of indexed rows drops the index (it would file them under stale partitions)
    table.merge_insert("id").when_matched_update_all().execute([{"vector": [9.0] * DIM, "id": 5}])
    assert table.index_stats("vector_idx") is None
    assert table.search([9.0] * DIM).limit(1).to_list()[0]["id"] == 5
    table.create_index(metric="l2", vector_column_name="vector", index_type="IVF_PQ", num_partitions=2,
                       num_sub_vectors=2)
    assert table.index_stats("vector_idx").index_type == "IVF_PQ"
    table.add([{"vector": [0.0] * DIM, "id": 1000}], mode="overwrite")
    assert table.index_stats("vector_idx") is None  # overwrite dropped the index
    assert table.search([0.0] * DIM).limit(1).to_list()[0]["id"] == 1000


def test_schema_evolution(db) -> None:
    table = db.create_table("evolve", data=[{"vector": [float(i), 1.0], "id": i, "price": i * 1.5} for i in range(5)])
    table.add_columns({"double_price": "price * 2"})
    assert table.search().where("id = 2").to_list()[0]["double_price"] == 6.0
    table.alter_columns({"path": "double_price", "rename": "dp"})
    table.alter_columns({"path": "id", "data_type": pa.int32()})
    assert table.schema.field("dp").type == pa.float64() and table.schema.field("id").type == pa.int32()
    table.drop_columns(["dp"])
    assert "dp" not in table.schema.names
    hits = table.search([2.0, 1.0]).limit(1).to_list()  # vectors, metric and search unaffected
    assert hits[0]["id"] == 2 and hits[0]["_distance"] == 0.0
    with pytest.raises(HttpError, match="cannot be dropped"):
        table.drop_columns(["vector"])
    with pytest.raises(HttpError, match="cannot be altered"):
        table.alter_columns({"path": "vector", "rename": "v"})
    with pytest.raises(HttpError, match="schema change failed"):
        table.add_columns({"bad": "nope * 2"})


def test_drop_table(db) -> None:
    db.create_table("doomed", data=[{"vector": [1.0], "n": 1}])
    db.drop_table("doomed")
    assert "doomed" not in db.list_tables().tables
    with pytest.raises(ValueError, match="was not found"):
        db.open_table("doomed")


# --- errors -----------------------------------------------------------------------------------------------


def test_unknown_table(db) -> None:
    with pytest.raises(ValueError, match="Table 'nope' was not found"):
        db.open_table("nope")
    with pytest.raises(HttpError, match="was not found"):
        db.drop_table("nope")


def test_wrong_dimension_on_search_and_add(items) -> None:
    with pytest.raises(HttpError, match="dimension 3.*dimension 8") as info:
        items.search([1.0, 2.0, 3.0]).limit(1).to_list()
    assert info.value.status_code == 400
    with pytest.raises((HttpError, ValueError, pa.ArrowInvalid)):
        items.add([{"vector": [1.0, 2.0], "id": -1, "text": "bad", "category": "odd", "price": 0.0}])
    assert items.count_rows() == ROWS


def test_limits(fleet, items, base) -> None:
    with pytest.raises(HttpError, match="k \\+ offset must be between 1 and 10000"):
        items.search(base[0]).limit(20_000).to_list()
    # isize::MAX is how the client says "no limit": every row, up to max_k
    resp = requests.post(fleet.url + "/v1/table/items/query/", headers={"x-api-key": fleet.api_key},
                         json={"vector": base[0].tolist(), "k": 9223372036854775807, "columns": ["id"]})
    assert pa.ipc.open_file(resp.content).read_all().num_rows == ROWS


def test_bad_filter(items) -> None:
    with pytest.raises(HttpError, match="invalid filter") as info:
        items.search(np.zeros(DIM)).where("nope > 1").limit(1).to_list()
    assert info.value.status_code == 400 and "nope" in str(info.value)
    with pytest.raises(HttpError, match="invalid filter"):
        items.count_rows("price >>> 1")
    with pytest.raises(HttpError, match="invalid filter"):
        items.delete("not a sql (")
    assert items.count_rows() == ROWS


@pytest.mark.parametrize("predicate", ["regexp_match(text, '(')", "id / 0 > 1"])
def test_filter_failing_on_the_data(fleet, items, base, predicate: str) -> None:
    """Filters that type-check but fail while running: a 400 everywhere, and no executor is marked down."""
    with pytest.raises(HttpError, match="400.*filter failed while running"):
        items.search(base[0]).where(predicate).limit(3).to_list()
    with pytest.raises(HttpError, match="400"):
        items.search().where(predicate).limit(3).to_list()
    with pytest.raises(HttpError, match="400.*filter failed while running"):
        items.count_rows(predicate)
    with pytest.raises(HttpError, match="400.*filter failed while running"):
        items.delete(predicate)
    ring = requests.get(fleet.url + "/admin/ring", headers={"x-api-key": fleet.api_key}).json()
    assert len(ring["live"]) == 2  # the bad query did not take the executors out of routing
    assert items.count_rows() == ROWS and len(items.search(base[0]).limit(3).to_list()) == 3


def test_bad_update_and_merge(db, items) -> None:
    with pytest.raises(HttpError, match="unknown column 'nope'"):
        items.update(where="id = 1", values={"nope": 1})
    with pytest.raises(HttpError, match="cannot be updated"):
        items.update(where="id = 1", values={"vector": [0.0] * DIM})
    with pytest.raises(HttpError, match="merge key"):
        items.merge_insert("nope").when_not_matched_insert_all().execute(
            [{"vector": [0.0] * DIM, "id": 1, "text": "x", "category": "odd", "price": 1.0}])


def test_wrong_or_missing_key_reads_and_writes_nothing(fleet, db, items) -> None:
    bad = lancedb.connect("db://appliance", api_key="sk-wrong", host_override=fleet.url,
                          client_config=ClientConfig(retry_config=RetryConfig(retries=1)))
    with pytest.raises(HttpError, match="401"):
        bad.list_tables()
    with pytest.raises((HttpError, ValueError)):
        bad.create_table("intruder", data=[{"vector": [1.0], "n": 1}])
    assert "intruder" not in db.list_tables().tables
    sink = pa.BufferOutputStream()
    rows = pa.table({"vector": pa.array([[0.0] * DIM], pa.list_(pa.float32(), DIM)), "id": [-1]})
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    for headers in ({}, {"x-api-key": "sk-wrong"}):
        resp = requests.post(fleet.url + "/v1/table/items/insert/", data=sink.getvalue().to_pybytes(),
                             headers={"content-type": "application/vnd.apache.arrow.stream", **headers})
        assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
        query = requests.post(fleet.url + "/v1/table/items/query/", json={"vector": [0.0] * DIM, "k": 1},
                              headers=headers)
        assert query.status_code == 401 and not query.content.startswith(b"ARROW1")
    assert items.count_rows() == ROWS


def test_async_client(fleet, items) -> None:
    async def run() -> tuple[int, list[int]]:
        adb = await lancedb.connect_async("db://appliance", api_key=fleet.api_key, host_override=fleet.url)
        table = await adb.open_table("items")
        rows = await (await table.search([0.0] * DIM)).limit(3).to_list()
        return await table.count_rows(), [r["id"] for r in rows]

    count, ids = asyncio.run(run())
    assert count == ROWS and len(ids) == 3


def test_raw_protocol_details(fleet, items) -> None:
    """What the client relies on but does not show: Arrow file answers, bare-integer counts, bodyless POSTs,
    JSON errors with our message, and 400 (not 404, which the client reads as 'table not found') for
    operations we do not implement."""
    http = requests.Session()
    http.headers["x-api-key"] = fleet.api_key
    url = fleet.url + "/v1/table/items"
    resp = http.post(url + "/query/", json={"vector": [0.0] * DIM, "k": 2, "prefilter": True, "version": None})
    assert resp.headers["content-type"] == "application/vnd.apache.arrow.file"
    assert pa.ipc.open_file(resp.content).read_all().num_rows == 2
    assert http.post(url + "/count_rows/", json={"version": None}).json() == ROWS
    describe = http.post(url + "/describe/")  # no body, no content-type: what open_table sends
    assert describe.status_code == 200 and describe.json()["schema"]["fields"][0]["type"] == {
        "type": "fixed_size_list", "fields": [{"name": "item", "type": {"type": "float"}, "nullable": True}],
        "length": DIM}
    bad = http.post(url + "/query/", json={"vector": [0.0] * DIM, "k": "ten"})
    assert bad.status_code == 400 and set(bad.json()) >= {"error", "code"}
    missing = http.post(url + "/rename/", json={"new_table_name": "other"})
    assert missing.status_code == 400 and missing.json()["code"] == "not_supported"
    assert "rename" in missing.json()["error"]
    assert http.post(fleet.url + "/v1/table/ns$t/describe/").status_code == 400
    assert json.loads(http.get(fleet.url + "/v1/namespace/$/table/list").text)["tables"]


def test_fleet_healthy_after_errors(fleet) -> None:
    assert all(node.alive for node in fleet.nodes)
    assert requests.get(fleet.url + "/readyz").status_code == 200


def test_table_metric_from_schema_metadata(db, fleet) -> None:
    """A table created through the client takes its metric from the schema's `appliance.metric` metadata: it
    is stored with the table, searches without `distance_type` use it, and `create_index()` (which sends
    the client's default l2) builds the index in it, so those searches use the index."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(64, DIM)).astype(np.float32) + 0.5
    schema = pa.schema([pa.field("vector", pa.list_(pa.float32(), DIM)), pa.field("id", pa.int64())],
                       metadata={"appliance.metric": "cosine"})
    table = db.create_table("cosine_items", data=[{"vector": v.tolist(), "id": i} for i, v in enumerate(base)],
                            schema=schema)
    native = requests.get(f"{fleet.url}/api/v1/tables/cosine_items", headers={"x-api-key": fleet.api_key})
    assert native.json()["metric"] == "cosine"
    q = rng.normal(size=DIM).astype(np.float32)
    hits = table.search(q.tolist()).limit(5).to_list()
    assert [h["id"] for h in hits] == exact_ids(base, q, "cosine", 5)
    cos = 1 - base[hits[0]["id"]] @ q / (np.linalg.norm(base[hits[0]["id"]]) * np.linalg.norm(q))
    assert hits[0]["_distance"] == pytest.approx(cos, abs=1e-4)
    table.create_index(vector_column_name="vector", index_type="IVF_FLAT", num_partitions=2)
    assert table.index_stats("vector_idx").distance_type == "cosine"
    plan = requests.post(f"{fleet.url}/api/v1/tables/cosine_items/explain", headers={"x-api-key": fleet.api_key},
                         json={"vector": q.tolist(), "k": 5}).json()
    assert plan["strategy"] == "ivf", plan
    # an explicit other metric is still honoured per query
    dot = table.search(q.tolist()).distance_type("dot").limit(5).to_list()
    assert [h["id"] for h in dot] == exact_ids(base, q, "dot", 5)
    # replaced without the key (mode="overwrite"), the table keeps its metric
    db.create_table("cosine_items", data=[{"vector": v.tolist(), "id": i} for i, v in enumerate(base[:8])],
                    mode="overwrite")
    assert requests.get(f"{fleet.url}/api/v1/tables/cosine_items",
                        headers={"x-api-key": fleet.api_key}).json()["metric"] == "cosine"
    # an empty table from a schema alone keeps it too; a metric the appliance has not is a 400 naming the key
    db.create_table("dot_empty", schema=schema.with_metadata({"appliance.metric": "dot"}))
    assert requests.get(f"{fleet.url}/api/v1/tables/dot_empty",
                        headers={"x-api-key": fleet.api_key}).json()["metric"] == "dot"
    with pytest.raises(ValueError, match="appliance.metric"):
        db.create_table("bad_metric", schema=schema.with_metadata({"appliance.metric": "hamming"}))
