"""The floor of each layer of a search: what the HTTP front, the executor hop and the scan cost at least, beside
the real search, in CPU milliseconds per request of each process, on one fleet in one run.

Run it with `make bench-floor` (about 3-5 minutes on 2 cores); it writes the "floor" section of
docs/BENCHMARKS.md.

One local fleet (1 query node, the executors `make run` starts: 2; health checks at the default interval,
no indexers), debian-minilm loaded once through the HTTP API, an hnsw_sq index built with `POST .../index`
(its default parameters and ef). Then, in rounds (each layer once per round, in the same order, so the
machine's load falls on every layer alike; the table gives each figure's median over the rounds), with 8
client threads of this process, each with its own keep-alive connection or stream:

1. `GET /healthz` on the query node: gunicorn + Flask with no work, the front's floor; and 1b. `POST
   .../explain` with the search bodies: the front, the body parsed, the table version bound and the search
   planned, one request at a time (searches do this once per coalesced batch), no hop;
2. the search bench's requests (`bench_search.search_bodies`: JSON, k 10, columns ["row"], dev queries);
3. the same searches with raw float32 bodies (`application/octet-stream`, `x-vector-dimension`, the other
   fields in the query string; README "Binary query vectors");
4. a bare Arrow Flight DoExchange round trip through the query node's own client
   (`appliance.query.dispatch.FlightStreams`) to an echo server this script starts in a process of
   its own, with the executors' token middleware (`appliance.executor.runner.TokenCheck`): it reads the
   header JSON and the query matrix (`plan.queries_of`) and answers a prepared message of a search's answer
   size (10 ids and distances, the batch's stats, the payload column `row` as Arrow IPC), each message the
   size of a one-query search's (its header built from the plan `POST .../explain` reports, the query's
   record batch built per round trip as the dispatcher does): the hop's floor;
5. the executor's scan alone, in this process on one thread (as executors run with `kernel_threads` 1): the
   executor's own `PartitionScanner.scan_many` over the index the fleet built, read from the data root, one
   query per call at the plan's ef and fetch k; and, under it, faiss's HNSW search alone
   (`kernels.hnsw_search` on the same graph);
6. PostgreSQL + pgvector through psycopg, when installed (`bench_search.bench_pgvector`: load, HNSW m 16,
   ef_construction 64, ef_search chosen by its rule; measured once, after the rounds), else the reason.

CPU per request: `fleet_support.CpuMeter` over each phase (each process tree's CPU time, the query node's,
each executor's, the echo server's, and this process's as "client"), divided by the requests answered;
for the in-process scan, this thread's CPU time (`time.thread_time`) per query.

Options: `--rows N` (the first N base vectors; the truth is then recomputed), `--rounds R` (default 5),
`--scale F` (requests per phase times F), `--skip-pgvector`, `--no-write` (print the section only).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pg_support
import pyarrow as pa
from bench_search import (
    CLIENTS,
    HEALTH_INTERVAL,
    TABLE,
    K,
    Run,
    Sender,
    bench_pgvector,
    build_index,
    exact_truth,
    load_table,
    measure,
    process_label,
    recall_at_k,
    search_bodies,
)
from fleet_support import FRAGMENT_ROWS, SHARED_DATA, Api, CpuMeter, fleet_processes, free_port_block, running_fleet
from report import load_average, machine_line, write_section

from appliance.query.dispatch import FlightStreams

CODEC = "hnsw_sq"
ROUNDS = 5
# requests per phase (times --scale); the scan's count serves the faiss row too
REQUESTS = {"healthz": 4000, "explain": 3000, "json": 2000, "binary": 2000, "hop": 4000, "scan": 2000}
WARM = 300  # requests of each layer before the rounds (caches, graphs, streams, connections)
ECHO = "echo server"
IN_PROCESS = "in-process"
LAYERS = {
    "healthz": "1. front: `GET /healthz` on the query node",
    "explain": "1b. front + parse + plan: `POST .../explain`, the same JSON bodies",
    "json": "2. search, JSON body (the real path)",
    "binary": "3. search, float32 body",
    "hop": "4. hop: Flight DoExchange round trip to an echo server",
    "scan": "5. scan: the executor's `scan_many`, 1 thread, in-process",
    "faiss": "5b. of which faiss HNSW search (`kernels.hnsw_search`)",
}
SEARCH_PATH = f"/api/v1/tables/{TABLE}/search"


# --- clients -------------------------------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP connection (http.client, as bench_search's `Http`), any method and headers."""

    def __init__(self, api: Api, timeout: float = 60.0) -> None:
        url = urlsplit(api.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.key = api.key

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
             ) -> bytes:
        self.conn.request(method, path, body, {"x-api-key": self.key, **(headers or {})})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return data


def healthz_sender(api: Api) -> Callable[[], Sender]:
    def make() -> Sender:
        conn = Conn(api)

        def send(_i: int) -> list[int]:
            conn.send("GET", "/healthz")
            return []
        return send
    return make


def json_sender(api: Api, bodies: list[bytes]) -> Callable[[], Sender]:
    headers = {"content-type": "application/json"}

    def make() -> Sender:
        conn = Conn(api)
        return lambda i: [r["row"] for r in json.loads(conn.send("POST", SEARCH_PATH, bodies[i % len(bodies)],
                                                                 headers))["results"]]
    return make


def explain_sender(api: Api, bodies: list[bytes]) -> Callable[[], Sender]:
    headers = {"content-type": "application/json"}
    path = f"/api/v1/tables/{TABLE}/explain"

    def make() -> Sender:
        conn = Conn(api)

        def send(i: int) -> list[int]:
            json.loads(conn.send("POST", path, bodies[i % len(bodies)], headers))
            return []
        return send
    return make


def binary_sender(api: Api, queries: np.ndarray) -> Callable[[], Sender]:
    bodies = [np.ascontiguousarray(q, dtype="<f4").tobytes() for q in queries]
    path = f"{SEARCH_PATH}?k={K}&columns=row"
    headers = {"content-type": "application/octet-stream", "x-vector-dimension": str(queries.shape[1])}

    def make() -> Sender:
        conn = Conn(api)
        return lambda i: [r["row"] for r in json.loads(conn.send("POST", path, bodies[i % len(bodies)],
                                                                 headers))["results"]]
    return make


def batching(api: Api) -> tuple[float, float]:
    """(search batches run, searches run in them) so far on the query node, from its /metrics."""
    counts = {}
    for line in Conn(api).send("GET", "/metrics").decode().splitlines():
        name, _, value = line.partition(" ")
        if name.removesuffix("_total") in ("appliance_search_batches", "appliance_search_batched"):
            counts[name.removesuffix("_total")] = float(value)
    return counts.get("appliance_search_batches", 0.0), counts.get("appliance_search_batched", 0.0)


# --- the hop: an echo server in a process of its own -----------------------------------------------------------


def serve_echo(token: str, answer_rows: int, payload_rows: int) -> None:
    """`--echo`: a Flight server on a free loopback port (printed on stdout), with the executors' token
    middleware, answering every message of a DoExchange stream with one prepared answer message."""
    import orjson
    import pyarrow.flight as flight

    from appliance.executor.runner import TokenCheck
    from appliance.planner.plan import RESULT_SCHEMA, answer_metadata, queries_of, result_batch

    rng = np.random.default_rng(0)
    answer = result_batch(rng.integers(0, 2**40, answer_rows).astype(np.uint64),
                          rng.random(answer_rows, dtype=np.float32))
    payload = pa.table({"row": pa.array(rng.integers(0, 2**20, payload_rows), pa.int64())})
    meta = answer_metadata({"tasks": 1, "rows_scanned": 61666, "seconds": 0.000412, "short": False}, payload)

    class Echo(flight.FlightServerBase):
        def do_exchange(self, context, descriptor, reader, writer) -> None:  # noqa: ANN001 - pyarrow's API
            writer.begin(RESULT_SCHEMA)
            while True:
                try:
                    chunk = reader.read_chunk()
                except (StopIteration, flight.FlightError, pa.ArrowException):
                    return
                orjson.loads(chunk.app_metadata.to_pybytes())  # what an executor reads of every batch
                queries_of(chunk.data)
                try:
                    writer.write_with_metadata(answer, meta)
                except (flight.FlightError, pa.ArrowException):
                    return

    server = Echo("grpc+tcp://127.0.0.1:0", middleware={"token": TokenCheck(token)})
    print(server.port, flush=True)
    server.serve()


@dataclass
class EchoServer:
    process: subprocess.Popen
    location: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_echo(token: str, answer_rows: int, payload_rows: int) -> EchoServer:
    process = subprocess.Popen([sys.executable, __file__, "--echo", token, str(answer_rows), str(payload_rows)],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.isdigit():
        process.kill()
        raise RuntimeError(f"the echo server did not start (said {line!r})")
    return EchoServer(process, f"grpc+tcp://127.0.0.1:{line}")


def search_header(plan: dict, request_timeout_ms: int = 10_000) -> dict:
    """A task batch's header as the query node sends it for `plan` (an `explain` answer), its tasks rebuilt
    from their names (`T/index/v<N>/partition/<p>`, `T/fragment/<id>`) and its groups: one partition task per
    group key, one task per fragment, the same fields, about the same bytes (a one-query plan probes every
    partition it lists, so it needs no `probes`)."""
    from appliance.planner.plan import REQUEST_ID_FIELD, TIMEOUT_FIELD, Finish

    tasks = []
    partitions = [int(name.rsplit("/", 1)[1]) for name in plan["tasks"] if name.split("/")[-2] == "partition"]
    if partitions:
        doc: dict[str, object] = {"kind": "partition", "key": plan["groups"][0]["key"], "table": plan["table"],
                                  "version": plan["version"], "index_version": plan["index_version"],
                                  "partitions": partitions}
        if plan.get("ef"):
            doc["ef"] = plan["ef"]
        tasks.append(doc)
    for name in plan["tasks"]:
        parts = name.split("/")
        if parts[-2] == "fragment":
            tasks.append({"kind": "fragment", "key": name, "table": plan["table"], "version": plan["version"],
                          "fragment": int(parts[-1])})
    finish = Finish(plan["k"], refine=plan.get("refine_factor", 0) > 0, columns=("row",))
    return {"tasks": tasks, "k": plan["fetch_k"], "metric": plan["metric"], "filter": plan["filter"],
            TIMEOUT_FIELD: request_timeout_ms, REQUEST_ID_FIELD: uuid.uuid4().hex, **finish.to_header()}


def hop_sender(location: str, streams: FlightStreams, header: dict, queries: np.ndarray) -> Callable[[], Sender]:
    """Every client thread sends through one `FlightStreams` (appliance/query/dispatch.py; a query node's
    threads share one too), each round trip on an idle stream of its pool (one per thread under 8 threads),
    the query's record batch built per round trip as the dispatcher builds it (`plan.queries_batch`)."""
    from appliance.planner.plan import queries_batch
    from appliance.routing.connections import InFlight

    def make() -> Sender:
        def send(i: int) -> list[int]:
            batch = queries_batch(queries[i % len(queries)][None, :])
            doc, answer, payload = streams.exchange(location, header, batch, InFlight())
            if doc.get("status", 200) != 200 or payload is None:
                raise RuntimeError(f"echo answered {doc}")
            return answer.column(0).to_numpy(zero_copy_only=True)[:K].tolist()
        return send
    return make


# --- the scan, in-process ---------------------------------------------------------------------------------------


@dataclass
class Scan:
    """The fleet's index read from its data root: the executor's scanner and the graph itself."""

    scan_many: Callable[[np.ndarray], np.ndarray]
    faiss_search: Callable[[np.ndarray], np.ndarray]
    ef: int
    fetch_k: int
    rows: int


def open_scan(data: Path, plan: dict) -> Scan:
    import kernels
    from appliance.executor.partition import PartitionScanner
    from appliance.index import codec
    from appliance.index.store import IndexStore
    from appliance.storage.root import StorageRoot

    kernels.set_thread_budget(1)  # the executors' kernel_threads
    store = IndexStore(StorageRoot.parse(str(data)))
    held: dict[str, dict[str, np.ndarray]] = {}  # objects read once and kept, as a warm executor's RAM cache does

    def load(ref) -> dict[str, np.ndarray]:  # noqa: ANN001 - an ObjectRef
        if ref.key not in held:
            held[ref.key] = store.get_object(ref)[0]
        return held[ref.key]

    scanner = PartitionScanner(store, load)
    iv, ef, fetch_k = int(plan["index_version"]), int(plan["ef"]), int(plan["fetch_k"])
    manifest = scanner.manifest(TABLE, iv)
    work = [(p, None) for p in range(manifest.nlist)]
    graphs = []
    for refs in manifest.partitions:
        for ref in refs:
            obj = store.get_object(ref)[0]
            if "graph" in obj:
                graphs.append((kernels.hnsw_load(obj["graph"]), obj["ids"]))

    def scan_many(q: np.ndarray) -> np.ndarray:
        return scanner.scan_many(TABLE, iv, work, q, fetch_k, ef)[0]

    def faiss_search(q: np.ndarray) -> np.ndarray:
        prepared = codec.prepare_queries(q, manifest.metric)
        return np.concatenate([codec.search_graph(g, prepared, ids, fetch_k, ef)[0] for g, ids in graphs], axis=1)

    return Scan(scan_many, faiss_search, ef, fetch_k, manifest.rows)


def measure_in_process(fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, n: int) -> Run:
    """`fn` on queries 0..n-1 (cycled), one at a time on this thread: CPU ms per query of this thread."""
    ms = np.zeros(n)
    cpu0, t0 = time.thread_time(), time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        fn(queries[i % len(queries)][None, :])
        ms[i] = (time.perf_counter() - s) * 1000
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    return Run(ms, [], wall, {IN_PROCESS: cpu * 1000 / n})


# --- the report ---------------------------------------------------------------------------------------------------


@dataclass
class Layer:
    key: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""
    per_batch: list[float] = field(default_factory=list)  # searches: each round's searches per coalesced batch

    def cpu(self, process: str) -> float:
        return statistics.median((r.cpu or {}).get(process, 0.0) for r in self.runs)

    @property
    def processes(self) -> list[str]:
        return list((self.runs[0].cpu or {}).keys()) if self.runs else []

    def servers(self) -> list[float]:
        """Each round's CPU ms per request of every process but the client (in-process: the scan itself)."""
        return [sum(v for k, v in (r.cpu or {}).items() if k != CpuMeter.CLIENT) for r in self.runs]

    @property
    def qps(self) -> float:
        return statistics.median(r.qps for r in self.runs)

    def markdown(self) -> str:
        if not self.runs:
            return f"| {LAYERS.get(self.key, self.key)} | - | - | - | - | - | {self.note} |"
        each = " · ".join(f"{process_label(p)} {self.cpu(p):.3f}" for p in self.processes if p != CpuMeter.CLIENT)
        servers = self.servers()
        client = f"{self.cpu(CpuMeter.CLIENT):.3f}" if CpuMeter.CLIENT in self.processes else "-"
        note = self.note or (f"{statistics.median(self.per_batch):.1f} searches per batch" if self.per_batch else "")
        return (f"| {LAYERS.get(self.key, self.key)} | {statistics.median(servers):.3f} | "
                f"{min(servers):.3f}-{max(servers):.3f} | {client} | {each} | {self.qps:,.0f} | {note} |")


def appliance_cpu(layer: Layer) -> float:
    """CPU ms per request of the query node and the executors (medians per process, summed)."""
    return sum(layer.cpu(p) for p in layer.processes if p.startswith(("query-", "executor-")))


def query_cpu(layer: Layer) -> float:
    return sum(layer.cpu(p) for p in layer.processes if p.startswith("query-"))


def derived(layers: dict[str, Layer]) -> list[str]:
    """The floors summed against the real search, by side, and against issues 15's and 16's targets."""
    front, hop, scan, real = (layers.get(k) for k in ("healthz", "hop", "scan", "json"))
    if not (front and hop and scan and real and front.runs and hop.runs and scan.runs and real.runs):
        return []
    front_cpu, scan_cpu = query_cpu(front), scan.cpu(IN_PROCESS)
    hop_client, hop_server = hop.cpu(CpuMeter.CLIENT), hop.cpu(ECHO)
    floor = front_cpu + hop_client + hop_server + scan_cpu
    lines = []
    for key in ("json", "binary"):
        layer = layers.get(key)
        if not layer or not layer.runs:
            continue
        total, query = appliance_cpu(layer), query_cpu(layer)
        lines.append(
            f"- front floor + hop floor + scan = {front_cpu:.3f} + {hop_client + hop_server:.3f} + {scan_cpu:.3f} = "
            f"**{floor:.3f} ms** against the real search ({'JSON' if key == 'json' else 'float32'} body), all "
            f"appliance processes: **{total:.3f} ms** (query node {query:.3f}, executors {total - query:.3f}); above "
            f"the floors: {total - floor:.3f} ms ({(total - floor) / total:.0%} of it).")
    query, executors = query_cpu(real), appliance_cpu(real) - query_cpu(real)
    explain = layers.get("explain")
    plan_part = ""
    if explain and explain.runs:
        planned = query_cpu(explain)
        shared = f" of {statistics.median(real.per_batch):.1f} searches" if real.per_batch else ""
        plan_part = (f" An explain costs it {planned:.3f} ms a request, {planned - front_cpu:.3f} above the front: "
                     f"reading and parsing the body, binding the table version, planning and routing, and the plan's "
                     f"JSON answer, for each request alone (a search binds and plans once per coalesced "
                     f"batch{shared}).")
    lines.append(
        f"- By side, JSON search: **query node {query:.3f} ms** against its floors, the front {front_cpu:.3f} + the "
        f"hop's client half {hop_client:.3f} = {front_cpu + hop_client:.3f} (the client half is this process's CPU "
        f"per round trip, its client threads included).{plan_part} **Executors {executors:.3f} ms** against the "
        f"hop's server half {hop_server:.3f} + scan {scan_cpu:.3f} = {hop_server + scan_cpu:.3f} (one executor "
        f"answers the whole table; coalesced searches share a batch, so its hop and scan are per batch, not per "
        f"search).")
    lines.append(
        f"- Targets: query node <= 0.9 ms (issue 15): its floors take {front_cpu + hop_client:.3f} of it, its real "
        f"CPU is {query:.3f}; all appliance processes <= 1.2 ms (issue 16): the floors together take {floor:.3f}, "
        f"the real search {appliance_cpu(real):.3f}.")
    return lines


def report(layers: dict[str, Layer], started: float, load: tuple[float, float, float], loads: list[str],
           base: np.ndarray, info: dict, plan: dict, scan: Scan | None, recall: float | None, rounds: int,
           header_bytes: int, requests: dict[str, int]) -> str:
    when = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    busy = ""
    if max(load[0], os.getloadavg()[0]) > (os.cpu_count() or 1):
        busy = ("\n\n**Busy machine**: the load average was above the number of cores during this run, so other "
                "jobs took CPU from every process measured: QPS is low and uneven, CPU per request holds better "
                "but rises with the load too (more context switches, colder caches).")
    table = "\n".join([
        "| layer | CPU ms/request, servers (median) | servers, min-max over rounds | CPU ms/request, client | "
        "CPU ms/request by process | QPS | note |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- |",
        *(layer.markdown() for layer in layers.values())])
    p = info.get("params", {})
    counts = ", ".join(f"{k} {v:,}" for k, v in requests.items())
    return f"""## Floor: what each layer of a search costs at least (`bench/bench_floor.py`)

{machine_line()} Run started {when} and took {(time.time() - started) / 60:.1f} min; load average
(1/5/15 min) {load_average(load)} when it started, {load_average()} when this was written; 1-minute load
at each round's start: {", ".join(loads)}.{busy}

One local fleet (1 query node, 2 executors, health checks every {HEALTH_INTERVAL:g} s, no indexers),
`debian-minilm` ({len(base):,} x {base.shape[1]}, cosine) loaded once through the HTTP API in fragments of
{FRAGMENT_ROWS:,} rows, an index built with `POST .../index` codec {CODEC} (default parameters: m
{p.get("hnsw_m", "?")}, ef {p.get("ef", "?")}); searches k {K}, columns ["row"], the index's default ef (the plan's
ef {plan.get("ef")}, fetch k {plan.get("fetch_k")}, {len(plan.get("tasks", []))} task(s) per search){
f"; recall@10 of the JSON searches {recall:.3f}" if recall is not None else ""}. {rounds} round(s), each layer
once per round in the table's order ({counts} requests a phase, with {CLIENTS} client threads of the
benchmark, each with its own keep-alive connection or Flight stream; the scan one query at a time on one
thread); every figure is the median over the rounds. CPU per request: `fleet_support.CpuMeter` over each
phase (each process with its descendants; "client" is the benchmark process, its client threads and all),
divided by the requests answered; the scan's is its thread's CPU time per query.

- **1. front**: `GET /healthz` on the query node: gunicorn + Flask, no work, the HTTP front's floor.
  **1b.** `POST .../explain` with the search bodies: the front, reading and parsing the JSON body, the
  table version check, the plan and its routing, and a JSON answer (the plan); no hop.
- **2. / 3.** the search bench's requests (JSON bodies, as `make bench-search` sends), and the same with raw
  float32 bodies (`application/octet-stream`, the other fields in the query string). Concurrent searches
  are coalesced by the query node (`search_batch_rows`), so the executors see fewer batches than searches.
- **4. hop**: one Arrow Flight DoExchange round trip through the query node's own client (`FlightStreams`,
  one stream per client thread) to an echo server in a process of its own, with the executors' token
  middleware: it parses the header's JSON and the query matrix, and answers a prepared message (10 ids and
  distances, stats, the `row` payload as Arrow IPC), message sizes as a one-query search's (header
  {header_bytes} bytes of JSON + a {base.shape[1]}-float query). Both halves of the hop: the echo server's CPU
  and the client's (this process: the query node's side of the hop, plus the benchmark's thread overhead).
- **5. scan**: the executor's `PartitionScanner.scan_many` in this process, one thread, one query per call,
  over the index the fleet built ({scan.rows if scan else "?"} rows), read from the data root (graphs
  cached, as warm executors have them); **5b** the faiss HNSW search alone within it. No refine, payload or
  finish, which the executors do after the scan.
- **6. pgvector**: PostgreSQL's processes, from `bench_search.bench_pgvector` (measured once, not in the
  rounds), where installed.

{table}

{chr(10).join(derived(layers))}
"""


# --- the run ------------------------------------------------------------------------------------------------------


def debian_minilm(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(base vectors, the 1,000 dev queries, their exact top K) of debian-minilm, the base cut to its first
    `rows` (0: all; the truth then recomputed); None when the data set is not there."""
    files = [SHARED_DATA / f"{name}.npy" for name in ("base", "dev_queries", "dev_gt_ids")]
    if not all(f.exists() for f in files):
        return None
    base, queries = np.load(files[0]), np.load(files[1])
    if rows and rows < len(base):
        base = base[:rows].copy()
        return base, queries, exact_truth(base, queries)
    return base, queries, np.load(files[2])[:, :K]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=0, help="first N base vectors only (0: all)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--scale", type=float, default=1.0, help="requests per phase times this")
    parser.add_argument("--skip-pgvector", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write it")
    parser.add_argument("--echo", nargs=3, metavar=("TOKEN", "ANSWER_ROWS", "PAYLOAD_ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        serve_echo(args.echo[0], int(args.echo[1]), int(args.echo[2]))
        return 0
    started, load = time.time(), os.getloadavg()
    data = debian_minilm(args.rows)
    if data is None:
        print(f"{SHARED_DATA} is not present")
        return 1
    base, queries, truth = data
    counts = {k: max(CLIENTS, int(v * args.scale)) for k, v in REQUESTS.items()}
    layers = {key: Layer(key) for key in LAYERS}
    loads: list[str] = []
    recall = None
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        work = Path(tmp)
        with running_fleet(work, free_port_block(3), indexers=0, health_interval=HEALTH_INTERVAL) as (api, fleet):
            load_table(api, TABLE, base, "cosine", FRAGMENT_ROWS)
            info, seconds = build_index(api, TABLE, codec=CODEC)
            print(f"loaded and built {CODEC} in {(time.time() - started):.0f} s: {info.get('params')}", flush=True)
            plan = json.loads(Conn(api).send("POST", f"/api/v1/tables/{TABLE}/explain", search_bodies(queries[:1])[0],
                                             {"content-type": "application/json"}))
            print(f"plan: {plan}", flush=True)
            scan = open_scan(work / "data", plan)
            header = search_header(plan)
            token = fleet.settings.internal_token
            echo = start_echo(token, K, K)
            streams = FlightStreams(token)
            try:
                meter = CpuMeter(fleet_processes(fleet))
                echo_meter = CpuMeter({ECHO: echo.process.pid})
                bodies = search_bodies(queries)
                phases: dict[str, Callable[[int, bool], Run]] = {
                    "healthz": lambda n, m: measure(healthz_sender(api), n, CLIENTS, meter if m else None),
                    "explain": lambda n, m: measure(explain_sender(api, bodies), n, CLIENTS, meter if m else None),
                    "json": lambda n, m: measure(json_sender(api, bodies), n, CLIENTS, meter if m else None),
                    "binary": lambda n, m: measure(binary_sender(api, queries), n, CLIENTS, meter if m else None),
                    "hop": lambda n, m: measure(hop_sender(echo.location, streams, header, queries), n, CLIENTS,
                                                echo_meter if m else None),
                    "scan": lambda n, _m: measure_in_process(scan.scan_many, queries, n),
                    "faiss": lambda n, _m: measure_in_process(scan.faiss_search, queries, n),
                }
                for phase in phases.values():  # warm: connections, caches, graphs, streams
                    phase(WARM, False)
                check = phases["json"](len(queries), False)
                recall = recall_at_k(check.ids, truth[:len(queries)])
                binary = phases["binary"](len(queries), False)
                if binary.ids != check.ids:
                    raise RuntimeError("float32 bodies answered other rows than JSON bodies")
                for r in range(args.rounds):
                    loads.append(f"{os.getloadavg()[0]:.1f}")
                    for key, phase in phases.items():
                        before = batching(api) if key in ("json", "binary") else None
                        run = phase(counts.get(key, counts["scan"]), True)
                        layers[key].runs.append(run)
                        after = batching(api) if before is not None else None
                        if before is not None and after is not None and after[0] > before[0]:
                            layers[key].per_batch.append((after[1] - before[1]) / (after[0] - before[0]))
                        print(f"round {r + 1} {key}: {sum(v for k, v in (run.cpu or {}).items() if k != 'client'):.3f} "
                              f"ms servers, {(run.cpu or {}).get('client', 0):.3f} client, {run.qps:,.0f} QPS",
                              flush=True)
            finally:
                streams.close()
                echo.stop()
        if args.skip_pgvector:
            layers["pgvector"] = Layer("pgvector", note="skipped (--skip-pgvector)")
        elif (reason := pg_support.skip_reason()) is not None:
            layers["pgvector"] = Layer("pgvector", note=f"not measured: {reason}")
        else:
            layers["pgvector"] = pgvector_layer(base, queries, truth)
    LAYERS["pgvector"] = "6. PostgreSQL + pgvector (HNSW, psycopg)"
    text = report(layers, started, load, loads, base, info, plan, scan, recall, args.rounds,
                  len(json.dumps(header)), counts)
    if not args.no_write:
        write_section("floor", text)
    print(text)
    return 0


def pgvector_layer(base: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> Layer:
    """bench_search's pgvector run (its ef_search rule on dev queries 500 on, then 150 queries with 1 client
    and the next 250 with 8), its chosen setting's 8-client phase as the layer."""
    from bench_search import ONE_CLIENT_QUERIES, QUERIES, TUNE_FROM, Row

    rows: list[Row] = []
    note = bench_pgvector(base, queries[:QUERIES], truth[:QUERIES], queries[TUNE_FROM:], truth[TUNE_FROM:], rows, [],
                          ONE_CLIENT_QUERIES)
    chosen = next((r for r in rows if r.knob.endswith("(rule)")), None)
    if chosen is None or chosen.many is None:
        return Layer("pgvector", note=note)
    return Layer("pgvector", [chosen.many], note=f"{chosen.knob}, recall {chosen.recall:.3f}, measured once")


if __name__ == "__main__":
    raise SystemExit(main())
