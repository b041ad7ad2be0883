"""The indexer fleet over real processes: gunicorn query node and executors, `appliance indexer`
processes, the SQLite event queue, all on loopback.

Two fleets: `auto` is supervised as `appliance up` does it (an indexer starts when events wait and exits
when idle); `manual` runs no indexer by itself, so tests start, kill and count indexers themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO, SHARED_DATA, Api, start_fleet

from appliance.fleet import Fleet
from appliance.index import IndexStore
from appliance.storage import StorageRoot
from appliance.storage.schema import vector_type

GRACE = 6.0  # seconds the auto fleet keeps superseded versions
COMMON = {"executors": 1, "event_visibility_timeout": 3.0, "indexer_min_rows": 2000, "indexer_threads": 1}


def wait_for(what: str, check: Callable[[], object], timeout: float = 90, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, dim)).astype(np.float32) * 4
    return (centers[rng.integers(0, 64, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def load(api: Api, table: str, vectors: np.ndarray, start: int = 0, chunk: int = 100_000) -> None:
    dim = vectors.shape[1]
    for lo in range(0, len(vectors), chunk):
        part = vectors[lo:lo + chunk]
        api.insert_arrow(table, pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), dim).cast(vector_type(dim)),
            "row": np.arange(start + lo, start + lo + len(part)),
        }))


def stats(api: Api, table: str) -> dict:
    resp = api.get(f"/api/v1/tables/{table}/index")
    assert resp.status_code == 200, resp.text
    return resp.json()


def fully_indexed(api: Api, table: str) -> dict | None:
    s = stats(api, table)
    return s if s["index"] is not None and s["unindexed_rows"] == 0 else None


def search_rows(api: Api, table: str, queries: np.ndarray, **extra: object) -> list[list[int]]:
    resp = api.post(f"/api/v1/tables/{table}/search", {"vectors": queries.tolist(), "k": 10, "columns": ["row"],
                                                      **extra})
    assert resp.status_code == 200, resp.text
    return [[r["row"] for r in rows] for rows in resp.json()["results"]]


class QueryLoad:
    """Searches a table in a loop on a thread, recording every answer's status and index version."""

    def __init__(self, api: Api, table: str, query: np.ndarray) -> None:
        self.api, self.table, self.query = api, table, query
        self.answers: list[tuple[int, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> QueryLoad:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            resp = self.api.post(f"/api/v1/tables/{self.table}/search",
                                 {"vector": self.query.tolist(), "k": 5, "explain": True})
            version = resp.json()["plan"]["index_version"] if resp.status_code == 200 else None
            self.answers.append((resp.status_code, version))
            time.sleep(0.02)


# --- the supervised fleet ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("auto")
    fleet = start_fleet(root / "data", root / "logs", indexers=1, indexer_idle_timeout=3.0,
                        indexer_compact_fragments=1000, indexer_cleanup_grace=GRACE, **COMMON)
    supervisor = threading.Thread(target=fleet.supervise, kwargs={"poll": 0.2}, daemon=True)
    supervisor.start()
    yield fleet
    fleet.stop()
    supervisor.join(10)


@pytest.fixture(scope="module")
def auto_api(auto: Fleet) -> Api:
    return Api(auto.url, auto.api_key)


def test_index_appears_by_itself_with_high_recall(auto_api: Api) -> None:
    """The indexers' default codec for a small table is a graph (index/params.default_codec), whose build
    measured the ef reaching the target on the rows; searches use the index's default ef (at least 128, for
    queries unlike the rows: these come from other clusters than the table's) and are never narrower than
    the measured one."""
    vectors = clustered(6000, 32, seed=1)
    auto_api.create("fresh", 32, "l2", {"row": "int64"})
    load(auto_api, "fresh", vectors, chunk=3000)
    s = wait_for("the indexer to index 'fresh'", lambda: fully_indexed(auto_api, "fresh"))
    assert s["indexed_rows"] == 6000 and s["index_version"] >= 1 and s["last_build_time"] > 0
    # a build publishes before its step ends (the status says building-full until cleaning starts)
    assert s["indexer"]["state"] in ("idle", "working", "building-full", "building-partial", "cleaning")
    index = s["index"]
    assert index["codec"] == "hnsw_sq" and index["recall"]["min_ef"] == index["recall"]["ef"] >= 16
    assert index["params"]["ef"] == max(128, index["recall"]["ef"])
    queries = clustered(50, 32, seed=2)
    plan = auto_api.post("/api/v1/tables/fresh/explain", {"vector": queries[0].tolist()}).json()
    assert plan["strategy"] == "ivf" and plan["ef"] == index["params"]["ef"]
    narrow = auto_api.post("/api/v1/tables/fresh/explain", {"vector": queries[0].tolist(), "ef": 1}).json()
    assert narrow["ef"] == index["recall"]["min_ef"]
    got = search_rows(auto_api, "fresh", queries)
    exact = search_rows(auto_api, "fresh", queries, bypass_vector_index=True)
    recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
    assert recall >= 0.95


def test_indexer_idles_to_zero_and_a_new_insert_starts_one(auto: Fleet, auto_api: Api) -> None:
    auto_api.create("idle", 16, "l2", {"row": "int64"})
    load(auto_api, "idle", clustered(2500, 16, seed=3))
    wait_for("'idle' to be indexed", lambda: fully_indexed(auto_api, "idle"))
    wait_for("the indexer to exit when idle", lambda: auto.indexers.running == 0 and not auto.indexers.processes,
             timeout=60)
    assert stats(auto_api, "idle")["events"]["in_flight"] + stats(auto_api, "idle")["events"]["ready"] == 0
    started = auto.indexers.started
    load(auto_api, "idle", clustered(300, 16, seed=4), start=2500)
    s = wait_for("the new rows to be indexed", lambda: fully_indexed(auto_api, "idle"))
    assert auto.indexers.started == started + 1
    assert s["indexed_rows"] == 2800 and s["index"]["kind"] == "partial"
    wait_for("the indexer to exit again", lambda: auto.indexers.running == 0, timeout=60)


def test_background_requests_reject_bad_input(auto_api: Api) -> None:
    auto_api.create("requests", 4, "l2")
    for body in ({"background": True, "codec": "nope"}, {"background": "yes"}, {"background": True, "nlist": -1}):
        resp = auto_api.post("/api/v1/tables/requests/index", body)
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_input", resp.text
    assert auto_api.post("/api/v1/tables/nosuch/optimize", {}).status_code == 404
    assert auto_api.post("/api/v1/tables/nosuch/index", {"background": True}).status_code == 404
    assert stats(auto_api, "requests")["indexer"] == {"state": "never"}


def test_compaction_keeps_query_results(auto_api: Api) -> None:
    auto_api.create("small", 16, "l2", {"row": "int64"})
    vectors = clustered(2400, 16, seed=5)
    for i in range(12):
        load(auto_api, "small", vectors[i * 200:(i + 1) * 200], start=i * 200)
    wait_for("'small' to be indexed", lambda: fully_indexed(auto_api, "small"))
    assert auto_api.get("/api/v1/tables/small").json()["fragments"] == 12
    queries = clustered(20, 16, seed=6)
    before = search_rows(auto_api, "small", queries)
    exact_before = search_rows(auto_api, "small", queries, bypass_vector_index=True)
    resp = auto_api.post("/api/v1/tables/small/optimize", {})
    assert resp.status_code == 202, resp.text
    wait_for("compaction", lambda: auto_api.get("/api/v1/tables/small").json()["fragments"] == 1)
    assert search_rows(auto_api, "small", queries) == before
    assert search_rows(auto_api, "small", queries, bypass_vector_index=True) == exact_before
    assert fully_indexed(auto_api, "small")["indexed_rows"] == 2400


def test_cleanup_removes_old_versions_but_nothing_in_use(auto: Fleet, auto_api: Api) -> None:
    auto_api.create("old", 16, "l2", {"row": "int64"})
    vectors = clustered(3000, 16, seed=7)
    load(auto_api, "old", vectors)
    first = wait_for("'old' to be indexed", lambda: fully_indexed(auto_api, "old"))["index_version"]
    assert auto_api.post("/api/v1/tables/old/index", {"background": True}).status_code == 202
    wait_for("the requested rebuild", lambda: stats(auto_api, "old")["index_version"] > first)
    for i in range(2):  # two more table versions, and partial index versions on top of the rebuild
        load(auto_api, "old", clustered(10, 16, seed=8 + i), start=3000 + 10 * i)
    wait_for("the new rows to be indexed", lambda: fully_indexed(auto_api, "old"))
    root = StorageRoot.parse(auto.settings.data)
    uri = root.join("old.lance")
    versions_before = len(lance.dataset(uri).versions())
    assert versions_before >= 3 and first in IndexStore(root).versions("old")  # all within the grace period
    time.sleep(GRACE + 0.5)
    with QueryLoad(auto_api, "old", vectors[0]) as queries:
        load(auto_api, "old", clustered(10, 16, seed=10), start=3020)  # any event of the table triggers cleanup
        wait_for("cleanup", lambda: first not in IndexStore(root).versions("old")
                 and len(lance.dataset(uri).versions()) < versions_before, timeout=60)
        time.sleep(0.5)
    assert queries.answers and all(status == 200 for status, _ in queries.answers)
    indexes = IndexStore(root)
    for ref in indexes.current("old").objects():
        indexes.read_object(ref)  # what the published version names is all there
    assert len(search_rows(auto_api, "old", vectors[:5])) == 5
    assert auto_api.get("/api/v1/tables/old").json()["rows"] == 3030
    assert fully_indexed(auto_api, "old")["indexed_rows"] == 3030


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "base.npy").exists(), reason=f"{SHARED_DATA} is not present")
def test_debian_minilm_is_indexed_without_asking(auto_api: Api) -> None:
    base = np.load(SHARED_DATA / "base.npy")
    queries = np.load(SHARED_DATA / "dev_queries.npy")[:200]
    truth = np.load(SHARED_DATA / "dev_gt_ids.npy")[:200, :10]
    auto_api.create("minilm", base.shape[1], "cosine", {"row": "int64"})
    started = time.monotonic()
    load(auto_api, "minilm", base, chunk=16384)
    loaded = time.monotonic()
    s = wait_for("debian-minilm to be indexed", lambda: fully_indexed(auto_api, "minilm"), timeout=600, every=0.5)
    print(f"\ndebian-minilm: loaded in {loaded - started:.1f}s, fully indexed {time.monotonic() - loaded:.1f}s "
          f"after the load (index v{s['index_version']}, {s['index']['kind']})")
    got = search_rows(auto_api, "minilm", queries)
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth.tolist(), strict=True)])
    assert recall >= 0.95


# --- indexers started by hand ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("manual")
    fleet = start_fleet(root / "data", root / "logs", indexers=0, indexer_idle_timeout=30.0, **COMMON)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def manual_api(manual: Fleet) -> Api:
    return Api(manual.url, manual.api_key)


def spawn_indexer(fleet: Fleet, log: Path, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, **fleet.settings.to_env(), **env}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "appliance.cli", "indexer"], cwd=REPO, env=full_env,
                                stdout=out, stderr=subprocess.STDOUT)


def test_kill_9_mid_build_keeps_the_old_index_serving_and_the_build_is_redone(manual: Fleet, manual_api: Api,
                                                                              tmp_path: Path) -> None:
    vectors = clustered(20_000, 64, seed=9)
    manual_api.create("crash", 64, "l2", {"row": "int64"})
    load(manual_api, "crash", vectors)
    first = spawn_indexer(manual, tmp_path / "first.log")
    try:
        wait_for("the first index", lambda: fully_indexed(manual_api, "crash"))
        assert stats(manual_api, "crash")["index_version"] == 1
        with QueryLoad(manual_api, "crash", vectors[0]) as queries:
            assert manual_api.post("/api/v1/tables/crash/index", {"background": True}).status_code == 202
            wait_for("the rebuild to start", lambda: stats(manual_api, "crash")["indexer"]["state"] == "building-full",
                     every=0.02)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            assert stats(manual_api, "crash")["index_version"] == 1  # nothing half-built was published
            second = spawn_indexer(manual, tmp_path / "second.log")
            try:
                s = wait_for("the rebuild to be redone", lambda: (lambda s: s if s["index_version"] == 2 else None)(
                    stats(manual_api, "crash")), timeout=120)
                wait_for("the event to be acknowledged", lambda: stats(manual_api, "crash")["events"]["in_flight"] == 0
                         and stats(manual_api, "crash")["events"]["ready"] == 0, timeout=30)
            finally:
                second.terminate()
                assert second.wait(30) == 0
        assert s["index"]["kind"] == "full"
        report = stats(manual_api, "crash")
        assert report["indexer"]["event"]["delivery"] == 2  # the killed build's event, delivered again
        assert report["events"]["dead"] == 0
        assert queries.answers and all(status == 200 for status, _ in queries.answers)
        assert {v for _, v in queries.answers} <= {1, 2} and queries.answers[0][1] == 1
        indexes = IndexStore(StorageRoot.parse(manual.settings.data))
        for ref in indexes.current("crash").objects():
            indexes.read_object(ref)  # the published version is whole
    finally:
        if first.poll() is None:
            first.kill()


def test_two_indexers_never_build_the_same_table_together(manual: Fleet, manual_api: Api, tmp_path: Path) -> None:
    tables = ["pair_a", "pair_b"]
    for i, table in enumerate(tables):
        manual_api.create(table, 64, "l2", {"row": "int64"})
        vectors = clustered(10_000, 64, seed=20 + i)
        load(manual_api, table, vectors[:5000])
        load(manual_api, table, vectors[5000:], start=5000)
        for _ in range(2):
            assert manual_api.post(f"/api/v1/tables/{table}/index", {"background": True}).status_code == 202
    indexers = [spawn_indexer(manual, tmp_path / f"pair{i}.log", APPLIANCE_INDEXER_IDLE_TIMEOUT="2")
                for i in range(2)]
    assert [p.wait(180) for p in indexers] == [0, 0]
    indexes = IndexStore(StorageRoot.parse(manual.settings.data))
    for table in tables:
        # four events each; the first builds, and the later ones find a build that started after them
        manifests = [indexes.manifest(table, v) for v in indexes.versions(table)]
        assert len(manifests) == 1, [(m.created_at, m.build_seconds) for m in manifests]
        assert fully_indexed(manual_api, table)["indexed_rows"] == 10_000
    assert stats(manual_api, tables[0])["events"] == {"ready": 0, "in_flight": 0, "dead": 0}


def test_an_indexer_on_sqs_indexes_a_table_and_idles_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cloud wiring end to end: events on an SQS FIFO queue (moto's server on loopback), one indexer."""
    from conftest import free_port_block
    from moto.server import ThreadedMotoServer

    from appliance.events import Event, open_queue
    from appliance.storage import TableStore

    port = free_port_block(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        for name, value in aws.items():
            monkeypatch.setenv(name, value)
        data = tmp_path / "data"
        tables = TableStore(StorageRoot.parse(str(data)))
        tables.create("t", 16, "l2", {"row": "int64"})
        vectors = clustered(2500, 16, seed=30)
        version = tables.append("t", pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16).cast(vector_type(16)),
            "row": np.arange(2500)}))
        url = f"sqs://ix-{port}?endpoint_url=http://127.0.0.1:{port}"
        queue = open_queue(url, str(data), visibility_timeout=3)
        queue.publish(Event(table="t", kind="appended", table_version=version))
        env = {**os.environ, **aws, "APPLIANCE_DATA": str(data), "APPLIANCE_EVENTS": url,
               "APPLIANCE_EVENT_VISIBILITY_TIMEOUT": "3", "APPLIANCE_INDEXER_IDLE_TIMEOUT": "2",
               "APPLIANCE_INDEXER_MIN_ROWS": "2000", "APPLIANCE_LOG_LEVEL": "warning"}
        done = subprocess.run([sys.executable, "-m", "appliance.cli", "indexer"], cwd=REPO, env=env,
                              capture_output=True, timeout=180)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        manifest = IndexStore(StorageRoot.parse(str(data))).current("t")
        assert manifest is not None and manifest.rows == 2500
        assert queue.stats().pending == 0
        queue.close()
    finally:
        server.stop()
