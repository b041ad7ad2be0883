"""The fenced index pointer and one build per table, on real Lance tables (a local root, and S3 on moto).

Races are interleaved deterministically: a build's progress callback (or the indexer's lease check, which
it calls after every batch) runs the competing operation in the middle of the build, after the build has
read the table and before it publishes.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from appliance.errors import Conflict
from appliance.events import Event
from appliance.index import IndexParams, IndexStore
from appliance.index.builder import build_full, build_partial
from appliance.indexer import worker as worker_module
from appliance.indexer.policy import Policy
from appliance.indexer.worker import TableWorker
from appliance.query.catalog import IndexCatalog
from appliance.query.service import QueryService
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type

DIM = 8
POLICY = Policy(min_rows=1000, codec="flat", growth=1.0, max_deltas=3, compact_fragments=100)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> StorageRoot:
    if request.param == "local":
        return StorageRoot.parse(str(tmp_path / "data"))
    s3 = request.getfixturevalue("s3")
    return StorageRoot.parse(f"s3://{s3.new_bucket()}/data", s3.storage_options)


@pytest.fixture
def local_root(tmp_path) -> StorageRoot:
    return StorageRoot.parse(str(tmp_path / "data"))


def rows(n: int, start: int, shift: float = 0.0) -> pa.Table:
    vectors = np.random.default_rng(start).standard_normal((n, DIM)).astype(np.float32) + shift
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(
        vector_type(DIM)), "row": np.arange(start, start + n)})


def setup(root: StorageRoot, n: int = 1200) -> tuple[TableStore, QueryService]:
    tables = TableStore(root)
    tables.create("t", DIM, "l2", {"row": "int64"})
    tables.append("t", rows(n, 0))
    return tables, QueryService(tables, None, IndexCatalog(IndexStore(root)))  # no executors needed here


def ev(action: str = "index") -> Event:
    return Event(table="t", kind="appended", table_version=1, action=action, created_at=time.time())


def once(action):
    """A callable that runs `action` on its first call only and always answers True (still held)."""
    done: list[bool] = []

    def call(*_args) -> bool:
        if not done:
            done.append(True)
            action()
        return True

    return call


# --- the compare-and-swap ------------------------------------------------------------------------------


def test_two_builds_from_the_same_pointer_one_wins_one_conflicts(root) -> None:
    """Build A reads the pointer, then build B runs from the same pointer and publishes; A must not move
    the pointer over B's version (before: it did, as CURRENT was read and then written)."""
    tables, _ = setup(root)
    indexes = IndexStore(root)
    won = []
    with pytest.raises(Conflict):
        build_full(tables, indexes, "t", IndexParams(nlist=4, seed=1),
                   progress=once(lambda: won.append(build_full(tables, IndexStore(root), "t",
                                                                IndexParams(nlist=8, seed=2)))))
    assert IndexStore(root).current("t").index_version == won[0].index_version
    assert IndexStore(root).current("t").nlist == 8
    # a partial build from the old pointer loses the same way
    stale = IndexStore(root).pointer("t")
    build_full(tables, indexes, "t", IndexParams(nlist=2))
    tables.append("t", rows(10, 5000))
    with pytest.raises(Conflict):
        build_partial(tables, IndexStore(root), "t", base=stale)
    assert IndexStore(root).current("t").nlist == 2


def test_readers_see_each_new_record_and_a_new_store_starts_from_the_hint(root) -> None:
    tables, _ = setup(root)
    reader = IndexStore(root)
    assert reader.current_version("t") is None
    first = build_full(tables, IndexStore(root), "t", IndexParams(nlist=4))
    assert reader.current_version("t") == first.index_version
    IndexStore(root).new_generation("t")
    assert reader.current_version("t") is None
    second = build_full(tables, IndexStore(root), "t", IndexParams(nlist=4))
    assert second.index_version == first.index_version + 1  # numbers are never handed out twice
    fresh = IndexStore(root).pointer("t")
    assert (fresh.seq, fresh.version, fresh.generation) == (3, second.index_version, 1)


# --- builds racing drops and overwrites ---------------------------------------------------------------


def test_an_indexer_build_that_a_drop_index_overtook_does_not_publish(root) -> None:
    tables, service = setup(root)
    worker = TableWorker(root, POLICY, grace=3600)
    worker.handle(ev(), lambda: True)
    assert service.catalog.indexes.current_version("t") == 1
    with pytest.raises(Conflict, match="replaced"):
        worker.handle(ev("rebuild"), once(lambda: service.table("t").drop_index()))
    assert IndexStore(root).current_version("t") is None, "a build begun before drop_index published after it"


def test_an_indexer_build_that_an_overwrite_overtook_does_not_serve_old_vectors(local_root) -> None:
    tables, service = setup(local_root)
    worker = TableWorker(local_root, POLICY, grace=3600)
    worker.handle(ev(), lambda: True)
    new = rows(1100, 0, shift=100.0)  # same row numbers, vectors far from the old ones
    with pytest.raises(Conflict):
        worker.handle(ev("rebuild"), once(lambda: service.table("t").overwrite(new)))
    indexes = IndexStore(local_root)
    assert indexes.current_version("t") is None, "an index of the overwritten rows was published"
    report = worker.handle(ev(), lambda: True)  # the event again: a full build of the new rows
    manifest = indexes.current("t")
    assert report["work"] == "full" and manifest.trained_rows == 1100 and manifest.generation == 1
    centroids = indexes.get_object(manifest.centroids)[0]["centroids"]
    assert centroids.mean() > 50  # trained on the new vectors


def test_an_updating_merge_insert_and_a_restore_start_new_generations(local_root) -> None:
    tables, service = setup(local_root)
    worker = TableWorker(local_root, POLICY, grace=3600)
    worker.handle(ev(), lambda: True)
    indexes = IndexStore(local_root)
    update = rows(10, 0, shift=50.0)
    with pytest.raises(Conflict):
        worker.handle(ev("rebuild"),
                      once(lambda: service.table("t").merge_insert("row", update, update_matched=True)))
    assert indexes.current_version("t") is None
    worker.handle(ev(), lambda: True)
    with pytest.raises(Conflict):
        worker.handle(ev("rebuild"), once(lambda: service.table("t").restore(2)))
    assert indexes.current_version("t") is None and indexes.pointer("t").generation == 2


# --- one build per table, and the user's choice sticks ------------------------------------------------


def test_the_indexer_leaves_a_table_alone_while_an_explicit_build_runs(local_root) -> None:
    """An insert wakes the indexer while an explicit build runs: the indexer builds nothing, and the
    explicit build is version 1 (before: the indexer built v1 beside it and the explicit one became v2)."""
    tables, service = setup(local_root)
    worker = TableWorker(local_root, POLICY, grace=3600)
    reports = []
    manifest = service.table("t").build_index(IndexParams(codec="sq8", nlist=4), "cosine",
                                              progress=once(lambda: reports.append(worker.handle(ev(), lambda: True))))
    assert "index" not in reports[0] and "yielded" in reports[0]
    current = IndexStore(local_root).current("t")
    assert manifest.index_version == current.index_version == 1
    assert (current.codec, current.nlist, current.metric) == ("sq8", 4, "cosine")


def test_an_indexer_build_stops_when_an_explicit_build_starts(local_root, monkeypatch) -> None:
    tables, service = setup(local_root)
    monkeypatch.setattr(worker_module, "YIELD_CHECK_SECONDS", 0.0)
    indexes = IndexStore(local_root)
    claim = indexes.explicit_build("t")
    report = TableWorker(local_root, POLICY, grace=3600).handle(ev(), once(claim.__enter__))
    claim.__exit__(None, None, None)
    assert report["work"] == "full" and "yielded" in report and "index" not in report
    assert indexes.current_version("t") is None and indexes.explicit_builds("t") == 0


def test_an_indexer_build_loses_to_an_explicit_build_that_finished_inside_it(local_root) -> None:
    tables, service = setup(local_root)
    worker = TableWorker(local_root, POLICY, grace=3600)
    worker.handle(ev(), lambda: True)
    with pytest.raises(Conflict):
        worker.handle(ev("rebuild"),
                      once(lambda: service.table("t").build_index(IndexParams(codec="fp16", nlist=3))))
    current = IndexStore(local_root).current("t")
    assert (current.codec, current.nlist) == ("fp16", 3), "the indexer's build replaced the explicit one"


def test_an_explicit_build_is_served_even_when_the_indexer_publishes_first(local_root) -> None:
    """The indexer can publish first only if it passed its last check before the explicit build's claim
    was taken; the explicit build then publishes again from the indexer's version (`rebase`)."""
    tables, service = setup(local_root)
    worker = TableWorker(local_root, POLICY, grace=3600)
    indexer_done = []

    def indexer_publishes_meanwhile() -> None:
        indexer_done.append(worker.handle(ev(), lambda: True))

    manifest = build_full(tables, service.catalog.indexes, "t", IndexParams(codec="sq8", nlist=4),
                          progress=once(indexer_publishes_meanwhile), requested={"params": {}, "metric": None},
                          rebase=True)
    assert indexer_done[0]["index"]["index_version"] == 1
    current = IndexStore(local_root).current("t")
    assert current.index_version == manifest.index_version == 2 and current.codec == "sq8"


def test_rebuilds_keep_the_users_codec_parameters_and_metric(local_root) -> None:
    tables, service = setup(local_root)
    worker = TableWorker(local_root, POLICY, grace=3600)
    service.table("t").build_index(IndexParams(codec="sq8", nlist=4, nprobes=2), "cosine")
    tables.append("t", rows(1300, 1200))  # more than doubled: the indexer retrains
    report = worker.handle(ev(), lambda: True)
    assert report["work"] == "full"
    indexes = IndexStore(local_root)

    def chosen() -> tuple:
        m = indexes.current("t")
        return m.codec, m.nlist, m.params["nprobes"], m.metric

    assert chosen() == ("sq8", 4, 2, "cosine")  # before: nlist and nprobes re-derived for 2500 rows
    service.table("t").overwrite(rows(1500, 0, shift=3.0))  # the index goes; the choice stays
    assert indexes.current_version("t") is None
    assert worker.handle(ev(), lambda: True)["work"] == "full"
    assert chosen() == ("sq8", 4, 2, "cosine")  # before: the indexer's own codec, flat
    service.table("t").drop_index(forget_choice=True)  # the user dropped it: the indexer's defaults again
    worker.handle(ev(), lambda: True)
    assert indexes.current("t").codec == "flat" and indexes.current("t").metric == "l2"
