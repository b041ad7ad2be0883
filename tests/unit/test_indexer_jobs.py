"""The indexer's decisions (pure) and its work on real Lance tables in a temporary storage root."""

from __future__ import annotations

import time

import lance
import numpy as np
import pyarrow as pa
import pytest

from appliance.events import Event
from appliance.index import IndexStore
from appliance.indexer.cleanup import cleanup_index_versions, cleanup_table_versions
from appliance.indexer.policy import Policy, TableState, decide
from appliance.indexer.worker import LeaseLost, TableWorker
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type

DIM = 8
POLICY = Policy(min_rows=1000, codec="flat", growth=1.0, max_deltas=3, compact_fragments=4)


def ev(action: str = "index", kind: str = "appended", created_at: float | None = None) -> Event:
    return Event(table="t", kind=kind, table_version=1, action=action,
                 created_at=time.time() if created_at is None else created_at)


@pytest.mark.parametrize(("state", "event", "expected"), [
    (TableState(rows=500, unindexed=500, small_fragments=1, deleted_heavy_fragments=0), ev(), "nothing"),
    (TableState(rows=1000, unindexed=1000, small_fragments=1, deleted_heavy_fragments=0), ev(), "full"),
    (TableState(rows=10, unindexed=10, small_fragments=1, deleted_heavy_fragments=0), ev("rebuild"), "full"),
    (TableState(rows=1500, unindexed=10, small_fragments=2, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000), ev(), "partial"),
    (TableState(rows=1500, unindexed=0, small_fragments=2, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000), ev(), "nothing"),
    (TableState(rows=2000, unindexed=10, small_fragments=2, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000), ev(), "full"),
    (TableState(rows=1500, unindexed=10, small_fragments=2, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000, deltas=3), ev(), "full"),
    (TableState(rows=1500, unindexed=0, small_fragments=2, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000, full_built_at=100.0), ev("rebuild", created_at=50.0), "nothing"),
    (TableState(rows=1500, unindexed=0, small_fragments=2, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000, full_built_at=100.0), ev("rebuild", created_at=150.0), "full"),
    (TableState(rows=1500, unindexed=0, small_fragments=4, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000), ev(), "compact"),
    (TableState(rows=1500, unindexed=5, small_fragments=2, deleted_heavy_fragments=0, has_index=True,
                trained_rows=1000), ev("optimize"), "partial+compact"),
    (TableState(rows=1500, unindexed=0, small_fragments=1, deleted_heavy_fragments=1, has_index=True,
                trained_rows=1000), ev(kind="deleted"), "compact"),
])
def test_decide(state: TableState, event: Event, expected: str) -> None:
    assert decide(state, event, POLICY).summary == expected


@pytest.fixture
def root(tmp_path) -> StorageRoot:
    return StorageRoot.parse(str(tmp_path / "data"))


def rows(n: int, start: int, seed: int = 0) -> pa.Table:
    vectors = np.random.default_rng(seed + start).standard_normal((n, DIM)).astype(np.float32)
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(
        vector_type(DIM)), "row": np.arange(start, start + n)})


def table_with(root: StorageRoot, *sizes: int) -> TableStore:
    tables = TableStore(root)
    tables.create("t", DIM, "l2", {"row": "int64"})
    start = 0
    for n in sizes:
        tables.append("t", rows(n, start))
        start += n
    return tables


def held() -> bool:
    return True


def test_worker_builds_full_then_partial_then_full_again(root) -> None:
    tables = table_with(root, 1200)
    worker = TableWorker(root, POLICY, grace=3600)
    report = worker.handle(ev(), held)
    assert report["work"] == "full" and report["index"]["indexed_rows"] == 1200
    tables.append("t", rows(100, 1200))
    report = worker.handle(ev(), held)
    assert report["work"] == "partial" and report["index"]["indexed_rows"] == 1300
    assert worker.handle(ev(), held)["work"] == "nothing"  # a duplicate event is harmless
    tables.append("t", rows(1200, 1300))
    report = worker.handle(ev(), held)
    assert report["work"] == "full" and report["index"]["trained_rows"] == 2500


def test_a_lost_lease_publishes_nothing(root) -> None:
    table_with(root, 1200)
    worker = TableWorker(root, POLICY, grace=3600)
    with pytest.raises(LeaseLost):
        worker.handle(ev(), lambda: False)
    assert IndexStore(root).current_version("t") is None


def test_missing_table_is_skipped(root) -> None:
    assert "skipped" in TableWorker(root, POLICY, grace=3600).handle(ev(), held)


def test_compaction_keeps_row_ids_and_index_coverage(root) -> None:
    tables = table_with(root, 1200)
    worker = TableWorker(root, POLICY, grace=3600)
    worker.handle(ev(), held)
    for i in range(5):
        tables.append("t", rows(10, 1200 + 10 * i))
    before = tables.snapshot("t").dataset.to_table(columns=["row"], with_row_id=True).sort_by("_rowid")
    report = worker.handle(ev(), held)
    assert report["work"] == "partial+compact"
    snap = tables.snapshot("t")
    assert len(snap.dataset.get_fragments()) == 1
    after = snap.dataset.to_table(columns=["row"], with_row_id=True).sort_by("_rowid")
    assert after.equals(before)  # same rows under the same ids
    manifest = IndexStore(root).current("t")
    assert snap.dataset.count_rows(f"_rowid >= {manifest.row_id_watermark}") == 0


def test_cleanup_keeps_what_is_current_and_removes_what_is_old(root) -> None:
    tables = table_with(root, 1200, 10, 10)
    indexes = IndexStore(root)
    worker = TableWorker(root, POLICY, grace=3600)
    worker.handle(ev("rebuild"), held)
    worker.handle(ev("rebuild", created_at=time.time() + 1), held)
    stray = indexes.put_object("t", {"x": np.zeros(3)})  # a dead build's leftover
    assert len(indexes.versions("t")) == 2
    old_versions = [v["version"] for v in lance.dataset(tables.uri("t")).versions()]
    # nothing is old enough yet
    assert cleanup_table_versions(tables, "t", grace=3600) == []
    assert cleanup_index_versions(indexes, "t", grace=3600) == {"manifests": [], "objects": 0}
    later = time.time() + 7200
    assert cleanup_table_versions(tables, "t", grace=3600, now=later) == old_versions[:-1]
    result = cleanup_index_versions(indexes, "t", grace=3600, now=later)
    assert result["manifests"] == [1] and result["objects"] >= 2  # v1's partitions and the stray object
    current = indexes.current("t")
    assert indexes.versions("t") == [current.index_version]
    for ref in current.objects():
        indexes.read_object(ref)  # every object the published version names is still there
    assert stray.key not in indexes.object_times("t")
    assert tables.snapshot("t").dataset.count_rows() == 1220


def test_a_rebuild_keeps_the_built_indexs_choices_and_sizes_the_rest_anew(root) -> None:
    """An index built by a path that records no explicit choice (an older release, a direct build): the
    indexer's rebuild keeps its codec, graph size and recall target, and chooses nlist for the new size."""
    from appliance.index.builder import build_full
    from appliance.index.params import IndexParams

    tables = table_with(root, 1200)
    indexes = IndexStore(root)
    build_full(tables, indexes, "t", IndexParams(codec="hnsw_flat", hnsw_m=8, target_recall=0.9, nlist=3))
    tables.append("t", rows(1300, 1200))
    report = TableWorker(root, POLICY, grace=3600).handle(ev(), held)
    assert report["work"] == "full"
    rebuilt = indexes.current("t")
    assert rebuilt.codec == "hnsw_flat"
    assert rebuilt.params["hnsw_m"] == 8 and rebuilt.params["target_recall"] == 0.9
    assert rebuilt.nlist == 1  # chosen for 2,500 rows, not the 3 the first build was given
