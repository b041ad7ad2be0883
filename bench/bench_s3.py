"""Ingest throughput and cold-cache query latency with the storage root on S3 vs a local folder.

Run it with `make bench-s3`; it writes the "s3" section of docs/BENCHMARKS.md.

S3 here is moto's server on loopback (in this process), the same one the tests use: it measures what the
appliance does over the S3 protocol (requests, retries, conditional commits, the cache's fetches), not a
network or AWS's own latency. Both roots are measured in one run, on the same ports and data.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fleet_support import REPO, SHARED_DATA, free_port_block, load_debian, local_fleet, timed
from report import machine_line, write_section

sys.path.insert(0, str(REPO / "tests"))
from s3_support import REQUESTS, S3Endpoint, start_moto  # noqa: E402

QUERIES = 100
COLD = {"cache_ram_bytes": 1, "cache_disk_bytes": 1}


def measure(work: Path, port: int, storage: dict[str, str], queries: np.ndarray) -> dict[str, float]:
    """Load the data set (timed), then query it with an empty cache (every fragment fetched each time)."""
    with local_fleet(work, port, "cache-ingest", **storage) as api:
        started = time.perf_counter()
        load_debian(api)
        ingest = time.perf_counter() - started
    with local_fleet(work, port, "cache-cold", **storage, **COLD) as api:
        api.search("debian", queries[0], k=10)
        cold = timed(api, queries)
    with local_fleet(work, port, "cache-warm", **storage) as api:
        timed(api, queries[:10])  # fill the RAM tier
        before = REQUESTS.total()
        warm = timed(api, queries)
        requests_per_query = (REQUESTS.total() - before) / len(queries)
    rows = len(np.load(SHARED_DATA / "base.npy", mmap_mode="r"))
    return {"ingest_s": ingest, "rows_per_s": rows / ingest, "cold_p50": float(np.percentile(cold, 50)),
            "cold_p99": float(np.percentile(cold, 99)), "warm_p50": float(np.percentile(warm, 50)),
            "warm_requests": requests_per_query}


def main() -> int:
    if not (SHARED_DATA / "base.npy").exists():
        print(f"{SHARED_DATA} is missing", file=sys.stderr)
        return 1
    queries = np.load(SHARED_DATA / "dev_queries.npy")[:QUERIES]
    moto_port = free_port_block(1)
    server = start_moto(moto_port)
    s3 = S3Endpoint(f"http://127.0.0.1:{moto_port}")
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
            work = Path(tmp)
            port = free_port_block(3)
            results["local folder"] = measure(work / "local", port, {}, queries)
            print("local:", results["local folder"], flush=True)
            s3_settings = {"data": f"s3://{s3.new_bucket()}/bench", "storage_options": s3.storage_options,
                           "events": f"sqlite://{work / 'events.sqlite'}"}
            results["S3 (moto)"] = measure(work / "s3", port, s3_settings, queries)
            print("s3:", results["S3 (moto)"], flush=True)
    finally:
        server.stop()

    local, remote = results["local folder"], results["S3 (moto)"]
    lines = [
        "## Object storage: S3 vs a local folder (`bench/bench_s3.py`)",
        "",
        machine_line(),
        "",
        "Data set: `debian-minilm`, 61,666 x 384 float32, cosine, inserted as Arrow IPC in 8 batches of 8,192 "
        "rows (one commit each); 1 query node and 2 executors on loopback; exact search, k=10, "
        f"{QUERIES} dev queries one per request. S3 is moto's server on loopback in the benchmark's process, "
        "so the S3 column measures the protocol path (requests, conditional commits, the cache's fetches), "
        "not a network. \"Cold\" runs with 1-byte cache tiers, so every query fetches every fragment from the "
        "storage root; \"warm\" with default budgets after one pass.",
        "",
        "| root | ingest s | rows/s | cold p50 ms | cold p99 ms | warm p50 ms | S3 requests per warm query |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        requests = f"{r['warm_requests']:.1f}" if name.startswith("S3") else "-"
        lines.append(f"| {name} | {r['ingest_s']:.1f} | {r['rows_per_s']:,.0f} | {r['cold_p50']:.1f} | "
                     f"{r['cold_p99']:.1f} | {r['warm_p50']:.1f} | {requests} |")
    lines += ["", f"S3 / local: ingest time x{remote['ingest_s'] / local['ingest_s']:.2f}, cold p50 "
              f"x{remote['cold_p50'] / local['cold_p50']:.2f}, warm p50 x{remote['warm_p50'] / local['warm_p50']:.2f}. "
              "The executors' side of a warm query is served from their cache; what remains on S3 is the query node's "
              "work per query: finding the table's latest version (a LIST, which read-your-writes across query nodes "
              "needs; the process's Lance session caches manifests and fragment metadata, so an unchanged version "
              "costs no GET), the index pointer, and range GETs of the payload columns of the k results. moto "
              "answers each in milliseconds of Python on the same two cores; caching payload columns on the query "
              "node is the next step for S3 latency."]
    write_section("s3", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
