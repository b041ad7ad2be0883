"""Ingest throughput with 1 and 8 concurrent writers on one table, with and without updates mixed in.

Run it with `make bench-ingest`; it writes the "ingest" section of docs/BENCHMARKS.md.

A real fleet (1 query node, 1 executor, no indexer) on a local folder. Each writer is a client thread
posting Arrow IPC inserts of `ROWS` rows to the native API, one request at a time, for `SECONDS` seconds;
in the mixed runs every 8th request of each writer is instead an update (`POST /v1/table/T/update/`) or a
delete of rows no one wrote. A request counts once it is acknowledged (200); any other answer is an error,
by status. "versions / request" is the number of table versions (Lance commits) the run made per
acknowledged write request: 1.0 without group commit, less when concurrent writes share commits.

`--json FILE` also writes the figures as JSON; `--before FILE` adds the figures of an earlier run (of an
older tree: run this script with `PYTHONPATH=<that tree>`) to the section, for a before/after table.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import requests
from fleet_support import free_port_block, local_fleet
from report import machine_line, write_section

from appliance.storage.schema import vector_type

ROWS = 100  # rows per insert request: a client streaming small batches, where the commit dominates
DIMENSION = 64
SECONDS = 12.0
RUNS = (("1 writer, inserts", 1, False), ("8 writers, inserts", 8, False),
        ("8 writers, inserts + updates/deletes", 8, True))


def arrow_body(writer: int, number: int) -> bytes:
    rng = np.random.default_rng(writer * 100_003 + number)
    vectors = rng.standard_normal((ROWS, DIMENSION)).astype(np.float32)
    table = pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION).cast(
            vector_type(DIMENSION)),
        "writer": pa.array(np.full(ROWS, writer), pa.int64()),
        "n": pa.array(np.arange(number * ROWS, (number + 1) * ROWS), pa.int64()),
        "score": pa.array(np.zeros(ROWS), pa.float64()),
    })
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue().to_pybytes()


def writer_loop(url: str, key: str, table: str, writer: int, mixed: bool, stop: threading.Event,
                out: dict) -> None:
    http = requests.Session()
    http.headers["x-api-key"] = key
    number = 0
    while not stop.is_set():
        started = time.perf_counter()
        if mixed and number % 8 == 7:
            kind = "update" if (number // 8) % 2 else "delete"
            if kind == "update":
                resp = http.post(f"{url}/v1/table/{table}/update/", timeout=120, json={
                    "predicate": f"writer = {writer} AND n < {number * ROWS}",
                    "updates": [["score", "score + 1"]]})
            else:
                resp = http.post(f"{url}/v1/table/{table}/delete/", timeout=120,
                                 json={"predicate": f"writer = {writer} AND n < 0"})
        else:
            kind = "insert"
            resp = http.post(f"{url}/api/v1/tables/{table}/rows", data=arrow_body(writer, number), timeout=120,
                             headers={"content-type": "application/vnd.apache.arrow.stream"})
        ms = (time.perf_counter() - started) * 1000
        with out["lock"]:
            if resp.status_code == 200:
                out["ok"][kind] += 1
                out["ms"][kind].append(ms)
            else:
                out["errors"][f"{kind} {resp.status_code}"] += 1
                out["samples"].setdefault(f"{kind} {resp.status_code}", resp.text[:300])
        number += 1


def run(url: str, key: str, table: str, writers: int, mixed: bool) -> dict:
    http = requests.Session()
    http.headers["x-api-key"] = key
    resp = http.post(f"{url}/api/v1/tables", json={"name": table, "dimension": DIMENSION, "metric": "l2",
                                                   "schema": {"writer": "int64", "n": "int64", "score": "float64"}})
    resp.raise_for_status()
    first = http.get(f"{url}/api/v1/tables/{table}").json()["version"]
    out = {"lock": threading.Lock(), "ok": collections.Counter(), "errors": collections.Counter(),
           "ms": collections.defaultdict(list), "samples": {}}
    stop = threading.Event()
    threads = [threading.Thread(target=writer_loop, args=(url, key, table, w, mixed, stop, out))
               for w in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    info = http.get(f"{url}/api/v1/tables/{table}").json()
    acknowledged = sum(out["ok"].values())
    inserts = out["ms"]["insert"]
    return {
        "writers": writers, "mixed": mixed, "seconds": elapsed,
        "rows_per_s": out["ok"]["insert"] * ROWS / elapsed,
        "requests_per_s": acknowledged / elapsed,
        "insert_p50_ms": float(np.percentile(inserts, 50)) if inserts else None,
        "insert_p99_ms": float(np.percentile(inserts, 99)) if inserts else None,
        "acknowledged": dict(out["ok"]), "errors": dict(out["errors"]), "error_samples": out["samples"],
        "versions_per_request": (info["version"] - first) / max(1, acknowledged),
        "rows": info["rows"],
    }


def row(label: str, tree: str, r: dict) -> str:
    errors = ", ".join(f"{n} x {k}" for k, n in sorted(r["errors"].items())) or "0"
    p50 = "-" if r["insert_p50_ms"] is None else f"{r['insert_p50_ms']:.0f}"
    p99 = "-" if r["insert_p99_ms"] is None else f"{r['insert_p99_ms']:.0f}"
    return (f"| {label} | {tree} | {r['rows_per_s']:,.0f} | {r['requests_per_s']:.1f} | {p50} | {p99} | "
            f"{r['versions_per_request']:.2f} | {errors} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--before", help="JSON of a run of an older tree, shown beside this run's figures")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        port = free_port_block(2)
        with local_fleet(Path(tmp), port, executors=1) as api:
            for i, (label, writers, mixed) in enumerate(RUNS):
                results[label] = run(api.url, api.key, f"ingest{i}", writers, mixed)
                print(label, json.dumps(results[label]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.no_write:
        return 0
    before = json.loads(Path(args.before).read_text()) if args.before else {}
    lines = [
        "## Ingest: concurrent writers on one table (`bench/bench_ingest.py`)",
        "",
        machine_line(),
        "",
        f"1 query node (8 request threads) and 1 executor on loopback, a local folder as the root, no indexer. "
        f"Each writer is a client thread sending Arrow IPC inserts of {ROWS} rows x {DIMENSION} float32 (plus 3 "
        f"int/float columns) to `POST /api/v1/tables/T/rows`, one request at a time, for {SECONDS:.0f} s; in the "
        "mixed run every 8th request of each writer is an update (`/v1/table/T/update/`) or a delete "
        "(`/v1/table/T/delete/`) instead. rows/s counts acknowledged inserts; versions / request is table "
        "versions made per acknowledged write. \"before\" is the tree before group commit (each request its "
        "own Lance commit, conflicts answered 400 or 503 storage_unavailable).",
        "",
        "| writers | tree | rows/s | write requests/s | insert p50 ms | insert p99 ms | versions / request | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, _, _ in RUNS:
        if label in before:
            lines.append(row(label, "before", before[label]))
        lines.append(row(label, "group commit", results[label]))
    lines += ["", "Without group commit every request is a commit of its own and 8 writers race for each version: "
              "throughput falls below one writer's, p99 reaches seconds (Lance's rebase-and-retry), and some "
              "requests fail. With it, a version holds about 3 requests at 8 writers and throughput grows with "
              "writers. The two trees ran back to back on the same machine, which other work shared: compare "
              "rows of one run, not runs."]
    write_section("ingest", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
