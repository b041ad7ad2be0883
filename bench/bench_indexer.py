"""The indexer fleet's cost to queries and its freshness: query latency while a full rebuild runs vs idle,
and the indexing lag of 10,000 new rows (inserted -> covered by the published index).

A real supervised fleet (1 query node, 2 executors, indexers started on demand as `appliance up` does) on
debian-minilm; writes the "indexer" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
from fleet_support import SHARED_DATA, Api, free_port_block
from report import machine_line, write_section

from appliance.config import Settings
from appliance.fleet import Fleet
from appliance.storage.schema import vector_type

IDLE_TIMEOUT = 15.0
LAG_ROWS = 10_000


@contextmanager
def supervised_fleet(work: Path):
    port = free_port_block(3)
    config = Settings.load(env={}).replace(
        data=str(work / "data"), port=port, executors=2, executor_base_port=port + 1, health_interval=0.2,
        log_level="warning", indexer_idle_timeout=IDLE_TIMEOUT, cache_dir=str(work / "cache"))
    fleet = Fleet(config, log_dir=work / "logs")
    fleet.start()
    supervisor = threading.Thread(target=fleet.supervise, kwargs={"poll": 0.2}, daemon=True)
    supervisor.start()
    try:
        yield fleet, Api(fleet.url, fleet.api_key)
    finally:
        fleet.stop()
        supervisor.join(10)


def insert(api: Api, table: str, vectors: np.ndarray, start: int) -> None:
    dim = vectors.shape[1]
    api.insert_arrow(table, pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim).cast(vector_type(dim)),
        "row": np.arange(start, start + len(vectors)),
    }))


def stats(api: Api, table: str) -> dict:
    return api.get(f"/api/v1/tables/{table}/index").json()


def wait(what: str, check, timeout: float = 900.0, every: float = 0.05) -> float:
    """Seconds until `check()` holds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(every)
    raise TimeoutError(what)


def latencies(api: Api, table: str, queries: np.ndarray, until=None, count: int = 0) -> list[float]:
    """Sequential single-query searches: `count` of them, or as many as run while `until()` is false."""
    out: list[float] = []
    i = 0
    while (count and len(out) < count) or (until is not None and not until()):
        body = {"vector": queries[i % len(queries)].tolist(), "k": 10}
        t = time.perf_counter()
        resp = api.post(f"/api/v1/tables/{table}/search", body)
        out.append(time.perf_counter() - t)
        assert resp.status_code == 200, resp.text
        i += 1
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> int:
    if not (SHARED_DATA / "base.npy").exists():
        print(f"{SHARED_DATA} is not present", file=sys.stderr)
        return 1
    base = np.load(SHARED_DATA / "base.npy")
    queries = np.load(SHARED_DATA / "dev_queries.npy")[:500]
    initial, extra = base[:-2 * LAG_ROWS], base[-2 * LAG_ROWS:]
    load_before = os.getloadavg()[0]  # the cores may be shared; the reader should know how busy they were
    with tempfile.TemporaryDirectory(prefix="bench-indexer-") as tmp, supervised_fleet(Path(tmp)) as (fleet, api):
        api.create("minilm", base.shape[1], "cosine", {"row": "int64"})
        loaded_at = time.monotonic()
        for lo in range(0, len(initial), 16384):
            insert(api, "minilm", initial[lo:lo + 16384], lo)
        wait("first index", lambda: (s := stats(api, "minilm"))["index"] is not None and s["unindexed_rows"] == 0)
        first_index = time.monotonic() - loaded_at
        wait("the indexer to idle out", lambda: fleet.indexers.running == 0)
        latencies(api, "minilm", queries, count=50)  # warm the executors' caches
        idle = latencies(api, "minilm", queries, count=400)

        before = stats(api, "minilm")["index_version"]
        assert api.post("/api/v1/tables/minilm/index", {"background": True}).status_code == 202
        requested = time.monotonic()
        wait("the rebuild to start", lambda: stats(api, "minilm")["indexer"]["state"] == "building-full")
        built = threading.Event()  # watched on a side thread, so the measured loop sends only queries

        def watch() -> None:
            wait("the build to end", lambda: stats(api, "minilm")["indexer"]["state"] != "building-full", every=0.25)
            built.set()

        threading.Thread(target=watch, daemon=True).start()
        during = latencies(api, "minilm", queries, until=built.is_set)
        wait("the rebuild to publish", lambda: stats(api, "minilm")["index_version"] > before)
        rebuild_seconds = time.monotonic() - requested
        latencies(api, "minilm", queries, count=50)  # the new version's partitions into the caches

        t = time.monotonic()
        insert(api, "minilm", extra[:LAG_ROWS], len(initial))
        wait("warm lag", lambda: stats(api, "minilm")["unindexed_rows"] == 0)
        warm_lag = time.monotonic() - t
        wait("the indexer to idle out", lambda: fleet.indexers.running == 0, timeout=IDLE_TIMEOUT + 60)
        t = time.monotonic()
        insert(api, "minilm", extra[LAG_ROWS:], len(initial) + LAG_ROWS)
        wait("cold lag", lambda: stats(api, "minilm")["unindexed_rows"] == 0)
        cold_lag = time.monotonic() - t
        final = stats(api, "minilm")

    ratio = pct(during, 99) / pct(idle, 99)
    text = f"""## Indexer: queries during a rebuild, and indexing lag (`bench/bench_indexer.py`)

{machine_line()}

Data set: `debian-minilm`, {len(initial):,} x {base.shape[1]} float32, cosine, then 2 x {LAG_ROWS:,} more rows;
1 query node, 2 executors and the indexers `appliance up` starts on demand (defaults: niceness 10, 1 BLAS
thread, flat codec), all on this machine. Queries: one dev query per HTTP request, k=10, sequential, default
nprobes, through the published IVF index. Load average (1 min) when the run began: {load_before:.1f}; both
phases ran in the same run, so the ratio compares like with like even on a busy machine.

| phase | queries | p50 ms | p99 ms |
| --- | ---: | ---: | ---: |
| idle (no indexer running) | {len(idle)} | {pct(idle, 50):.1f} | {pct(idle, 99):.1f} |
| during a full rebuild | {len(during)} | {pct(during, 50):.1f} | {pct(during, 99):.1f} |

p99 during the rebuild / p99 idle: **{ratio:.2f}x** (same run). The rebuild (requested with
`POST .../index {{"background": true}}`, an indexer already idle-exited, so this includes its start) took
{rebuild_seconds:.1f} s to publish. The first index appeared {first_index:.1f} s after the load began
without being asked for.

Indexing lag of {LAG_ROWS:,} new rows (one insert -> `unindexed_rows` = 0, a partial build: the rows are
assigned to the existing centroids): **{warm_lag:.1f} s** with an indexer running, **{cold_lag:.1f} s** when
the insert has to start one (it had exited after {IDLE_TIMEOUT:.0f} s idle). Until then the new rows are
flat-scanned, so queries find them at once. Final index: v{final['index_version']} ({final['index']['kind']}),
{final['indexed_rows']:,} rows.
"""
    write_section("indexer", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
