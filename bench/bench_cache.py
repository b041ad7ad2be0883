"""Query latency through the HTTP API with the executors' cache cold, NVMe-warm and RAM-warm (debian-minilm).

Run it with `make bench-cache`; it writes the "cache" section of docs/BENCHMARKS.md.

Every state is a fresh start of a real local fleet (1 query node, 2 executors) on the same data root and
ports, so each executor finds its own cache folder again. Budgets pin every query to one state (a tier with
a 1-byte budget stays empty):

    cold        RAM 1 B, NVMe 1 B, a new cache folder: every fragment comes from object storage every time
    NVMe-warm   RAM 1 B, the NVMe folder filled by an earlier run: every fragment is read from NVMe, verified
    RAM-warm    default budgets, after one pass: every fragment is in RAM

and, with default budgets, the first query of an empty cache and the first query after a restart that kept
the cache folder (the warm restart).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fleet_support import FRAGMENT_ROWS, SHARED_DATA, Api, free_port_block, load_debian, local_fleet, timed
from report import machine_line, write_section

QUERIES = 200
EMPTY = {"cache_ram_bytes": 1}


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port_block(3)
        self.queries = np.load(SHARED_DATA / "dev_queries.npy")[:QUERIES]
        self.rows: list[str] = []

    @contextmanager
    def fleet(self, cache: str, **budgets: int) -> Iterator[Api]:
        """A fleet on the bench's data root and ports, with its cache in folder `cache`, for one block."""
        with local_fleet(self.work, self.port, cache, **budgets) as api:
            yield api

    def measure(self, api: Api, state: str, queries: np.ndarray) -> dict[str, Any]:
        """Add the state's row; return the fleet's cache statistics after it."""
        before = cache_stats(api)
        ms = timed(api, queries)
        after = cache_stats(api)
        self.rows.append(row(state, ms, before, after))
        return after


def cache_stats(api: Api) -> dict[str, Any]:
    return api.get("/admin/cache").json()


def row(state: str, ms: np.ndarray, before: dict[str, Any], after: dict[str, Any]) -> str:
    def rate(tier: str) -> str:
        hits = after[tier]["hits"] - before[tier]["hits"]
        lookups = hits + after[tier]["misses"] - before[tier]["misses"]
        return f"{hits / lookups:.1%}" if lookups else "-"

    fetches = after["storage"]["fetches"] - before["storage"]["fetches"]
    p50, p99 = np.percentile(ms, [50, 99])
    return (f"| {state} | {len(ms)} | {p50:.1f} | {p99:.1f} | {ms.mean():.1f} | {rate('ram')} | {rate('nvme')} "
            f"| {fetches} |")


def executor_p50(doc: dict[str, Any], tier: str, field: str) -> str:
    """Median over the executors of their p50 time to read one fragment, in ms."""
    p50s = [e["stats"][tier][field]["p50"] for e in doc["executors"] if e["stats"][tier][field]["p50"] is not None]
    return f"{np.median(p50s) * 1000:.1f} ms" if p50s else "-"


def main() -> int:
    if not (SHARED_DATA / "base.npy").exists():
        print(f"{SHARED_DATA} is not present", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        bench = Bench(Path(tmp))
        with bench.fleet("cache") as api:  # default budgets, empty cache folder
            load_debian(api)
            bench.measure(api, "first query, empty cache", bench.queries[:1])
            timed(api, bench.queries)  # warm-up: fills RAM
            bench.measure(api, "RAM-warm", bench.queries)
        with bench.fleet("cache") as api:  # restarted, keeping the folder: RAM empty, NVMe warm
            bench.measure(api, "first query after a warm restart", bench.queries[:1])
        with bench.fleet("cache", **EMPTY) as api:
            nvme_read = executor_p50(bench.measure(api, "NVMe-warm", bench.queries), "nvme", "read_seconds")
        with bench.fleet("cache-cold", cache_disk_bytes=1, **EMPTY) as api:
            fetch = executor_p50(bench.measure(api, "cold", bench.queries), "storage", "fetch_seconds")

    base = np.load(SHARED_DATA / "base.npy", mmap_mode="r")
    table = "\n".join([
        "| cache state | queries | p50 ms | p99 ms | mean ms | RAM hit rate | NVMe hit rate | object-storage fetches |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *bench.rows,
    ])
    text = f"""## Cache: query latency by cache state (`bench/bench_cache.py`)

{machine_line()}

Data set: `debian-minilm`, {len(base):,} x {base.shape[1]} float32, cosine, loaded as
{-(-len(base) // FRAGMENT_ROWS)} fragments of up to {FRAGMENT_ROWS:,} rows
({FRAGMENT_ROWS * base.shape[1] * 4 / 1e6:.1f} MB of vectors each); 1 query node and 2 executors on loopback;
exact search (no index), k=10, one dev query per HTTP request. Each state is a fresh start of the fleet; a
tier budget of 1 byte keeps that tier empty, so every query of the "cold" row reads every fragment from
object storage, and every query of the "NVMe-warm" row reads them from the NVMe tier (read and
checksum-verified). The "cold" row skips the NVMe write that a real first read pays; the "first query,
empty cache" row includes it (8 fragments fetched, encoded, written and fsynced).

{table}

Per fragment, on the executors (median of their p50s): object-storage fetch {fetch}, NVMe read + verify
{nvme_read}. Object storage here is a local folder whose files sit in the OS page cache, so "cold" measures
Lance decoding, not a network; on S3 a cold fragment also pays the transfer. Likewise the NVMe tier's files
are page-cached after the first read.
"""
    write_section("cache", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
