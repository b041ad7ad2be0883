"""Tables on a real local storage root (Lance datasets on disk)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from appliance.errors import InvalidInput, TableExists, TableNotFound
from appliance.storage import BlobStore, StorageRoot, TableStore
from appliance.storage.root import parse_options
from appliance.storage.schema import rows_to_table, vector_type
from appliance.storage.tables import read_fragment_vectors


@pytest.fixture
def store(tmp_path) -> TableStore:
    return TableStore(StorageRoot.parse(str(tmp_path / "root")))


def rows(n: int, dim: int = 3, start: int = 0) -> list[dict]:
    return [{"vector": [float(start + i)] * dim, "n": start + i} for i in range(n)]


def test_create_list_describe_drop(store: TableStore) -> None:
    info = store.create("t1", 3, "dot", {"n": "int64"})
    assert (info.version, info.rows, info.dimension, info.metric) == (1, 0, 3, "dot")
    with pytest.raises(TableExists):
        store.create("t1", 3, "dot")
    assert store.list() == ["t1"]
    store.drop("t1")
    assert store.list() == []
    with pytest.raises(TableNotFound):
        store.describe("t1")


def test_append_returns_committed_version_and_row_ids_are_stable(store: TableStore) -> None:
    store.create("t", 3, "l2", {"n": "int64"})
    schema = store.snapshot("t").dataset.schema
    v2 = store.append("t", rows_to_table(rows(5), schema))
    v3 = store.append("t", rows_to_table(rows(5, start=5), schema))
    assert (v2, v3) == (2, 3)
    assert store.snapshot("t", version=2).dataset.count_rows() == 5  # older versions stay readable
    before = store.snapshot("t")
    ids = {}
    for fid in before.fragment_ids():
        frag_ids, vecs = read_fragment_vectors(before, fid)
        ids.update({int(i): float(v[0]) for i, v in zip(frag_ids, vecs, strict=True)})
    version, deleted = store.delete("t", "n = 7")
    assert deleted == 1 and version == 4
    store.snapshot("t").dataset.optimize.compact_files(target_rows_per_fragment=1000)
    after = store.snapshot("t")
    assert len(after.fragment_ids()) == 1
    frag_ids, vecs = read_fragment_vectors(after, after.fragment_ids()[0])
    assert {int(i): float(v[0]) for i, v in zip(frag_ids, vecs, strict=True)} == {
        i: v for i, v in ids.items() if v != 7.0
    }


def test_snapshots_see_every_commit_and_a_recreated_table_never_its_old_rows(store: TableStore) -> None:
    """Snapshots share one Lance session (cached manifests and row-id index): it must never serve a
    version older than the latest, nor the rows of a dropped table whose name was taken again."""
    store.create("t", 3, "l2", {"n": "int64"})
    schema = store.snapshot("t").dataset.schema
    store.append("t", rows_to_table(rows(3), schema))
    old = store.snapshot("t")
    assert old.take(np.array([0, 1, 2], np.uint64), ["n"]) == {0: {"n": 0}, 1: {"n": 1}, 2: {"n": 2}}
    assert old.fragment_row_ranges() == {0: (0, 2)}  # memoised per version
    store.append("t", rows_to_table(rows(2, start=3), schema))
    assert store.snapshot("t").dataset.count_rows() == 5
    store.drop("t")
    store.create("t", 3, "l2", {"n": "int64"})
    store.append("t", rows_to_table(rows(4, start=100), schema))  # the same version number as `old`
    again = store.snapshot("t")
    assert again.version == old.version and again.identity() != old.identity()
    assert again.take(np.array([0, 1, 2], np.uint64), ["n"]) == {0: {"n": 100}, 1: {"n": 101}, 2: {"n": 102}}
    assert sorted(again.dataset.to_table(columns=["n"]).column("n").to_pylist()) == [100, 101, 102, 103]
    assert again.fragment_row_ranges() == {0: (0, 3)}


def test_bad_rows_are_rejected_before_commit(store: TableStore) -> None:
    store.create("t", 3, "l2", {"n": "int64"})
    schema = store.snapshot("t").dataset.schema
    for bad, needle in [
        ([{"vector": [1, 2]}], "expects 3"),
        ([{"vector": [1, 2, float("nan")]}], "NaN"),
        ([{"vector": [1, True, 3]}], "finite numbers, got True"),
        ([{"vector": [1, "2", 3]}], "finite numbers, got '2'"),
        ([{"vector": [1, None, 3]}], "finite numbers, got None"),
        ([{"vector": "abc"}], "list"),
        ([{"vector": [1, 2, 3], "other": 1}], "unknown column"),
        ([{"vector": [1, 2, 3], "n": "x"}], "do not match"),
    ]:
        with pytest.raises(InvalidInput, match=needle):
            store.conform_rows("t", bad)  # JSON rows are checked and conformed once, as Arrow inserts are
    assert store.conform_rows("t", [{"vector": [1, 2.5, 3]}]).schema.equals(schema)
    nan = pa.table({"vector": pa.array([[1.0, float("nan"), 3.0]], vector_type(3))})
    with pytest.raises(InvalidInput, match="NaN"):
        store.append("t", nan)
    wrong_dim = pa.table({"vector": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))})
    with pytest.raises(InvalidInput, match="dimension 2"):
        store.append("t", wrong_dim)
    assert store.describe("t").version == 1  # nothing was committed


def test_filters_are_validated_without_running(store: TableStore) -> None:
    store.create("t", 2, "l2", {"n": "int64"})
    snap = store.snapshot("t")
    snap.validate_filter("n > 3 AND n < 10")
    for bad in ["n >>> 3", "missing = 1", "n = 'text'", "", "x" * 5000]:
        with pytest.raises(InvalidInput):
            snap.validate_filter(bad)


def test_table_names_cannot_escape_the_root(store: TableStore) -> None:
    for bad in ["../x", "a/b", "", ".hidden", "-x", "x" * 200]:
        with pytest.raises(InvalidInput):
            store.create(bad, 2, "l2")


def test_blobs_are_atomic_and_keys_are_confined(tmp_path) -> None:
    blobs = BlobStore(StorageRoot.parse(str(tmp_path)))
    assert blobs.get("a/b") is None
    blobs.put("a/b", b"one")
    blobs.put("a/b", b"two")
    assert blobs.get("a/b") == b"two" and blobs.exists("a/b")
    assert not list((tmp_path / "_appliance" / "a").glob("*.tmp-*"))
    with pytest.raises(ValueError):
        blobs.put("../escape", b"x")


def test_put_if_absent_never_overwrites(tmp_path) -> None:
    blobs = BlobStore(StorageRoot.parse(str(tmp_path)))
    assert blobs.put_if_absent("m/1.json", b"first")
    assert not blobs.put_if_absent("m/1.json", b"second")
    assert blobs.get("m/1.json") == b"first"
    assert not list((tmp_path / "_appliance" / "m").glob("*.tmp-*"))


def test_storage_options_reach_lance_and_local_roots_need_none() -> None:
    assert parse_options(" aws_region = eu-west-1,ALLOW_HTTP=true") == {"aws_region": "eu-west-1", "allow_http": "true"}
    with pytest.raises(ValueError, match="not key=value"):
        parse_options("aws_region")
    remote = StorageRoot.parse("s3://bucket/prefix/", "aws_region=eu-west-1")
    assert remote.uri == "s3://bucket/prefix" and remote.scheme == "s3"
    assert remote.lance_options()["aws_region"] == "eu-west-1" and "timeout" in remote.lance_options()
    assert StorageRoot.parse("./data", "aws_region=x").lance_options() is None


def test_vector_column_round_trips_as_float32(store: TableStore) -> None:
    store.create("t", 4, "l2")
    store.append("t", pa.table({"vector": pa.array(np.eye(4).tolist(), pa.list_(pa.float64(), 4))}))
    snap = store.snapshot("t")
    _, vecs = read_fragment_vectors(snap, snap.fragment_ids()[0])
    assert vecs.dtype == np.float32 and np.array_equal(vecs, np.eye(4, dtype=np.float32))
