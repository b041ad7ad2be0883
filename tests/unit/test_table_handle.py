"""Table handles (appliance/query/service.py): a handle's reads answer from the snapshot it pinned, its own
writes unpin it, a handle bound to a version searches that version, and a search of the latest version pins
nothing until its batch runs (read-your-writes through the Coalescer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from appliance.deadline import Deadline
from appliance.errors import TableNotFound
from appliance.index import IndexStore
from appliance.planner.plan import SearchPlan
from appliance.query.catalog import IndexCatalog
from appliance.query.dispatch import Found
from appliance.query.request import SearchRequest, search_request
from appliance.query.service import QueryService, SearchResult, Table
from appliance.storage import StorageRoot, TableStore

DIM = 2
ROWS = 100
FAR = [1000.0, 0.0]  # a row inserted here is the only one at distance 0 from a query at FAR


class ExactFleet:
    """Stands in for the executors: answers a plan exactly, from the version the plan names. While
    `release` is clear a search waits in the fleet (a batch in flight) and `running` says one arrived."""

    search_timeout = 10.0

    def __init__(self, store: TableStore) -> None:
        self.store = store
        self.running = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def search(self, plan: SearchPlan, queries: np.ndarray, request_id: str = "", deadline: Deadline | None = None,
               columns: Sequence[str] = (), schema: pa.Schema | None = None) -> Found:
        self.running.set()
        assert self.release.wait(10)
        rows = self.store.snapshot(plan.table, plan.version).dataset.to_table(columns=["vector"], with_row_id=True)
        vectors = rows.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
        distances = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2)
        best = np.argsort(distances, axis=1, kind="stable")[:, :plan.k]
        ids = rows.column("_rowid").to_numpy()[best].astype(np.uint64)
        return Found(ids, np.take_along_axis(distances, best, axis=1).astype(np.float32), None,
                     np.zeros(len(queries), bool))


def make_service(tmp_path, batch_rows: int = 0) -> tuple[QueryService, ExactFleet]:
    root = StorageRoot.parse(str(tmp_path / "root"))
    store = TableStore(root, version_check_seconds=60.0)  # searches reuse the latest version they opened
    store.create("t", DIM, "l2", {"n": "int64"})
    fleet = ExactFleet(store)
    service = QueryService(store, fleet, IndexCatalog(IndexStore(root)), batch_rows=batch_rows)  # type: ignore[arg-type]
    service.table("t").insert([{"vector": [float(i), 0.0], "n": i} for i in range(ROWS)])
    return service, fleet


@pytest.fixture
def service(tmp_path) -> QueryService:
    return make_service(tmp_path)[0]


def far_query() -> SearchRequest:
    return search_request("t", np.array([FAR], np.float32), 1, 100, columns=[])


def finds_far_row(result: SearchResult) -> bool:
    return len(result.distances) == 1 and float(result.distances[0]) == 0.0


def insert_far_row(table: Table) -> int:
    return table.insert([{"vector": FAR, "n": ROWS}])


def test_a_handle_bound_to_a_version_keeps_answering_from_it_after_a_write(service: QueryService) -> None:
    before = service.table("t").describe().version
    old = service.table("t", before)
    assert old.count_rows() == ROWS
    after = insert_far_row(service.table("t"))
    assert after > before
    assert old.count_rows() == ROWS and old.describe().version == before
    assert old.count_rows("n >= 0") == ROWS
    result = old.search(far_query())
    assert result.version == before and not finds_far_row(result)
    assert service.table("t", after).count_rows() == ROWS + 1


def test_a_latest_handle_reads_its_pinned_snapshot_until_it_writes(service: QueryService) -> None:
    table = service.table("t")
    pinned = table.describe().version
    assert table.count_rows() == ROWS
    insert_far_row(service.table("t"))  # another request's write
    assert table.count_rows() == ROWS and table.describe().version == pinned
    version = insert_far_row(table)  # its own write: the next read sees it
    assert table.count_rows() == ROWS + 2 and table.describe().version == version


def test_a_latest_search_sees_inserts_acknowledged_before_it(service: QueryService) -> None:
    table = service.table("t")
    assert table.count_rows() == ROWS  # a read pins the handle's snapshot; its searches still read the latest
    version = insert_far_row(service.table("t"))
    result = table.search(far_query())
    assert result.version == version and finds_far_row(result)


def test_a_batched_search_pins_its_version_when_its_batch_runs(tmp_path) -> None:
    """A search queued behind a batch in flight sees an insert acknowledged while it waited: its batch pins
    the latest version when it starts, not when the search was submitted."""
    service, fleet = make_service(tmp_path, batch_rows=64)
    coalescer = service.coalescer
    assert coalescer is not None
    fleet.release.clear()
    results: dict[str, SearchResult] = {}

    def search(key: str) -> None:
        results[key] = service.table("t").search(far_query())

    first = threading.Thread(target=search, args=("first",))
    first.start()
    assert fleet.running.wait(10)  # the first batch holds the only slot
    queued = threading.Thread(target=search, args=("queued",))
    queued.start()
    deadline = time.monotonic() + 10
    while not any(kind.queue for kind in list(coalescer._kinds.values())):
        assert time.monotonic() < deadline, "the second search never queued"
        time.sleep(0.005)
    version = insert_far_row(service.table("t"))
    fleet.release.set()
    first.join(10)
    queued.join(10)
    assert results["first"].version < version and not finds_far_row(results["first"])
    assert results["queued"].version == version and finds_far_row(results["queued"])


def test_a_handle_touches_no_storage_until_first_used(service: QueryService) -> None:
    missing = service.table("missing")  # no error yet: a request fails where it first reads or writes
    with pytest.raises(TableNotFound):
        missing.count_rows()
    with pytest.raises(TableNotFound):
        service.table("missing").search(far_query())
    with pytest.raises(TableNotFound):
        insert_far_row(service.table("missing"))


def test_searches_of_an_explicit_version_batched_together_open_it_once(tmp_path, monkeypatch) -> None:
    """A version is part of a batch's shape, so the batch opens it once for all its searches, not each search
    on its own handle."""
    service, fleet = make_service(tmp_path, batch_rows=64)
    coalescer = service.coalescer
    assert coalescer is not None
    version = service.table("t").describe().version
    opened: list[int | None] = []
    real_open = service.store._open
    monkeypatch.setattr(service.store, "_open", lambda name, v: opened.append(v) or real_open(name, v))
    fleet.release.clear()
    query = search_request("t", np.array([FAR], np.float32), 1, 100, version=version, columns=[])
    threads = [threading.Thread(target=lambda: service.table("t", version).search(query)) for _ in range(4)]
    threads[0].start()
    assert fleet.running.wait(10)  # the first search's batch holds the only slot; the others queue behind it
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 10
    while sum(len(kind.queue) for kind in list(coalescer._kinds.values())) < 3:
        assert time.monotonic() < deadline, "the searches never queued"
        time.sleep(0.005)
    fleet.release.set()
    for thread in threads:
        thread.join(10)
    # two batches (the first search's, then the other three's), each opening the version once, and the
    # stand-in fleet reading it once per batch; a handle that opened it for each search made this six
    assert opened == [version] * 4
