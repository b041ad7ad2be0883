"""Approximate search on debian-minilm: the appliance's IVF index through HTTP beside PostgreSQL + pgvector,
LanceDB and faiss.

Run it with `make bench-search` (about 10 minutes on 2 cores); it writes the "search" section of
docs/BENCHMARKS.md.

In one run, on one machine:

- the appliance: a real local fleet (1 query node, 2 executors on loopback), the base set loaded through
  the HTTP API, an IVF index built with `POST .../index` (codecs flat, sq8 and pq, default parameters), then
  at several `nprobes`: recall@10, p50/p99 latency and QPS with 1 client and with 8 concurrent clients, one
  query per HTTP request (keep-alive connections, JSON bodies encoded before the clock starts);
- PostgreSQL + pgvector (`bench/pg_support.py`): a private cluster on a loopback port, the base set loaded
  with COPY, HNSW (m 16, ef_construction 64, cosine), queried through psycopg and the pgvector adapter, 1
  client and 8 clients with a connection each, at several `hnsw.ef_search`, one of them chosen by a rule on
  dev queries that are never measured (skipped, with the reason printed and written, where not installed);
- LanceDB OSS embedded (`lancedb`, a local folder): IVF_PQ, 256 partitions, 48 sub-vectors, refine_factor
  10, at the same `nprobes`, 1 client and 8 client threads;
- faiss in-process, one query at a time, one thread: IVF256,Flat at the same `nprobe`, HNSW32 at several
  `efSearch`;
- over every 8-client phase, the CPU milliseconds per query of each process (`fleet_support.CpuMeter`: the
  query node, each executor, the postgres processes, each with its descendants, and the benchmark client);
- index build times of each; and the build time of the appliance's index on a synthetic clustered set
  (`bench/synthetic.py`, 1,000,000 x 128 by default) beside faiss IVF,Flat and pylance `create_index`.

Each setting sends the first 400 dev queries, one per search: 1 client the first 150, then 8 clients the
other 250; recall@10 is over all 400 (one HTTP request per query is slow enough on 2 shared cores that
the whole 1,000 at every setting would take most of an hour). Dev queries 500 on are kept for the rules
that pick a parameter (pgvector's ef_search). The section is written once the debian-minilm part is done,
and again with the synthetic build.

Options, for development: `--quick` (20,000 rows, 100 queries, the flat codec only, no synthetic build),
`--rows N` loads only the first N base vectors (the ground truth is then recomputed exactly),
`--queries Q`, `--one-client N`, `--codecs flat,pq`, `--synthetic-rows N` (0 skips it),
`--skip appliance,pgvector,lancedb,faiss`, `--no-write` (print the section only).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pg_support
import pyarrow as pa
from fleet_support import FRAGMENT_ROWS, SHARED_DATA, Api, CpuMeter, fleet_processes, free_port_block, running_fleet
from report import load_average, machine_line, write_section
from synthetic import clustered

from appliance.config import Settings
from appliance.storage.schema import vector_type

K = 10
NPROBES = (16, 32, 64)  # the appliance's, beside its default (tens of seconds each)
REFERENCE_NPROBES = (8, 16, 24, 32, 48, 64)  # LanceDB's and faiss's (cheap)
HNSW_EF = (16, 32, 64, 128)
CLIENTS = 8
PASSES = 3  # the 8-client phase sends its queries this many times: a window of seconds, not a fraction of one
QUERIES = 400  # dev queries used (of 1,000): 1 client sends the first 150, 8 clients the other 250
ONE_CLIENT_QUERIES = 150
RECALL_BATCH = 100  # queries per request of the appliance's batched recall pass
EXACT_QUERIES = 200
LANCEDB_PARTITIONS, LANCEDB_SUB_VECTORS, LANCEDB_REFINE = 256, 48, 10
FAISS_NLIST = 256
SYNTHETIC_BATCH = 100_000
TABLE = "minilm"
UNBATCHED = "appliance, batching off"
CODECS = ("flat", "sq8", "pq", "hnsw_sq", "hnsw_flat")  # the appliance's codecs measured, with default parameters
GRAPH_EF = (64, 128)  # graph codecs: search breadths measured beside the default
TUNE_FROM = 500  # dev queries TUNE_FROM.. tune what a rule picks (pgvector's ef_search); never measured
PG_TABLE = "items"
PG_M, PG_EF_CONSTRUCTION = 16, 64
PG_EF_SEARCH = (40, 64, 100, 200)  # hnsw.ef_search: the smallest reaching TARGET_RECALL on the tuning queries
TARGET_RECALL = 0.95
HEALTH_INTERVAL = Settings().health_interval  # the default (seconds between a query node's executor checks)
IDLE_SECONDS = 3.0  # how long a fleet's idle CPU is measured, once it is done
QUICK = {"rows": 20_000, "queries": 100, "one_client": 40, "synthetic_rows": 0, "codecs": "flat"}

Sender = Callable[[int], list[int]]  # query number -> the returned row numbers


@dataclass
class Run:
    """One measured configuration: per-request milliseconds, what each query returned, wall seconds, and
    where measured, CPU milliseconds per query of each process (tree) over the run, `client` included."""

    ms: np.ndarray
    ids: list[list[int]]
    wall: float
    cpu: dict[str, float] | None = None

    @property
    def server_cpu(self) -> float | None:
        """CPU ms per query of every process but the benchmark client (None: none measured)."""
        if not self.cpu or len(self.cpu) < 2:
            return None
        return sum(v for k, v in self.cpu.items() if k != CpuMeter.CLIENT)

    @property
    def qps(self) -> float:
        return len(self.ms) / self.wall

    def p(self, q: float) -> float:
        return float(np.percentile(self.ms, q))


@dataclass
class Row:
    system: str
    index: str
    knob: str  # "nprobes=16", "efSearch=32"
    refine: str
    recall: float  # one query per request, over every query sent (1 client and 8 clients together)
    one: Run
    many: Run | None = None
    batched: float | None = None  # the appliance's recall when queries come 100 to a request

    def markdown(self) -> str:
        many = (f"{self.many.p(50):.2f} | {self.many.p(99):.2f} | {self.many.qps:,.0f}" if self.many
                else "- | - | -")
        batched = f"{self.batched:.3f}" if self.batched is not None else "-"
        return (f"| {self.system} | {self.index} | {self.knob} | {self.refine} | {self.recall:.3f} | {batched} | "
                f"{self.one.p(50):.2f} | {self.one.p(99):.2f} | {self.one.qps:,.0f} | {many} | {self.cpu_cells()} |")

    def cpu_cells(self) -> str:
        """CPU ms per query over the 8-client phase: the servers together, the client, each process."""
        cpu = self.many.cpu if self.many else None
        if not cpu:
            return "- | - | -"
        servers = self.many.server_cpu
        each = " · ".join(f"{process_label(k)} {v:.2f}" for k, v in cpu.items() if k != CpuMeter.CLIENT)
        return f"{servers:.2f} | {cpu[CpuMeter.CLIENT]:.2f} | {each or '-'}" if servers is not None else \
            f"- | {cpu[CpuMeter.CLIENT]:.2f} | -"


def process_label(name: str) -> str:
    """"query-0" -> "query node", "executor-1" -> "executor 1", "postgres" -> "postgres"."""
    if name.startswith("query-"):
        return "query node"
    if name.startswith("executor-"):
        return "executor " + name.removeprefix("executor-")
    return name


def both(one: Run, many: Run, truth: np.ndarray) -> float:
    """recall@10 over the queries of a 1-client run and the 8-client run that followed it (the next ones)."""
    return recall_at_k(one.ids + many.ids, truth[:len(one.ids) + len(many.ids)])


def measure(make_sender: Callable[[], Sender], n: int, clients: int = 1, cpu: CpuMeter | None = None,
            passes: int = 1) -> Run:
    """Send queries 0..n-1 from `clients` threads, each with its own sender (connection), round robin,
    `passes` times over (what each query returned is kept from the first pass). With `cpu`, the processes'
    CPU time over the run too (snapshots just before the clients start and after the last answer), per
    query answered."""
    total = n * passes
    ms = np.zeros(total)
    ids: list[list[int]] = [[] for _ in range(n)]
    senders = [make_sender() for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def client(c: int) -> None:
        send = senders[c]
        start.wait()
        try:
            for j in range(c, total, clients):
                t0 = time.perf_counter()
                got = send(j % n)
                ms[j] = (time.perf_counter() - t0) * 1000
                if j < n:
                    ids[j] = got
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    if cpu is not None:
        cpu.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    spent = cpu.stop() if cpu is not None else None
    if errors:
        raise errors[0]
    per_query = {k: v * 1000 / total for k, v in spent.items()} if spent is not None and total else None
    return Run(ms, ids, wall, per_query)


def recall_at_k(ids: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(g[:K]) & set(t)) / K for g, t in zip(ids, truth.tolist(), strict=True)]))


def exact_truth(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-K by inner product (the vectors are unit length, so cosine), for a subset of the base."""
    scores = queries @ base.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


# --- the appliance, over HTTP ----------------------------------------------------------------------------


class Http:
    """One keep-alive connection, lighter than `requests` so the client steals less of the 2 cores."""

    def __init__(self, api: Api, timeout: float = 60.0) -> None:
        url = urlsplit(api.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.headers = {"x-api-key": api.key, "content-type": "application/json"}

    def post(self, path: str, body: bytes) -> dict:
        self.conn.request("POST", path, body, self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"POST {path}: {resp.status} {data[:300]!r}")
        return json.loads(data)


def appliance_sender(api: Api, table: str, bodies: list[bytes]) -> Callable[[], Sender]:
    path = f"/api/v1/tables/{table}/search"

    def make() -> Sender:
        conn = Http(api)
        return lambda i: [r["row"] for r in conn.post(path, bodies[i])["results"]]

    return make


def search_bodies(queries: np.ndarray, **params: object) -> list[bytes]:
    return [json.dumps({"vector": q.tolist(), "k": K, "columns": ["row"], **params}).encode() for q in queries]


def load_table(api: Api, table: str, vectors: np.ndarray, metric: str, batch: int) -> float:
    """Insert `vectors` (column `row` = their position) as Arrow IPC in batches; seconds taken."""
    api.create(table, vectors.shape[1], metric, {"row": "int64"})
    started = time.perf_counter()
    for start in range(0, len(vectors), batch):
        chunk = np.ascontiguousarray(vectors[start:start + batch])
        api.insert_arrow(table, pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), vectors.shape[1]).cast(
                vector_type(vectors.shape[1])),
            "row": np.arange(start, start + len(chunk)),
        }))
    return time.perf_counter() - started


def build_index(api: Api, table: str, **params: object) -> tuple[dict, float]:
    """`POST .../index` (synchronous: answers once the version is published); its description and seconds."""
    started = time.perf_counter()
    resp = api.http.post(f"{api.url}/api/v1/tables/{table}/index", data=json.dumps(params),
                         headers={"content-type": "application/json"}, timeout=3600)
    seconds = time.perf_counter() - started
    if resp.status_code != 201:
        raise RuntimeError(f"index build failed: {resp.status_code} {resp.text[:500]}")
    return resp.json(), seconds


def appliance_recall(api: Api, queries: np.ndarray, truth: np.ndarray, **params: object) -> float:
    """recall@10 over every query, sent RECALL_BATCH queries per request (one `vectors` search each)."""
    conn, got = Http(api, timeout=600), []
    for start in range(0, len(queries), RECALL_BATCH):
        body = {"vectors": queries[start:start + RECALL_BATCH].tolist(), "k": K, "columns": ["row"], **params}
        got += [[r["row"] for r in rows] for rows in
                conn.post(f"/api/v1/tables/{TABLE}/search", json.dumps(body).encode())["results"]]
    return recall_at_k(got, truth)


def bench_appliance(api: Api, meter: CpuMeter, queries: np.ndarray, truth: np.ndarray, rows: list[Row],
                    builds: list[str], one_client: int, codecs: tuple[str, ...] = CODECS) -> None:
    n = min(len(queries), one_client)
    exact = min(n, EXACT_QUERIES)
    run = measure(appliance_sender(api, TABLE, search_bodies(queries[:exact], bypass_vector_index=True)), exact)
    rows.append(Row("appliance", "none (exact scan)", "-", "-", recall_at_k(run.ids, truth[:exact]), run))
    for codec in codecs:
        info, seconds = build_index(api, TABLE, codec=codec)
        p = info["params"]
        builds.append("| appliance (`POST .../index`, query node, all cores: `build_threads` 0) | "
                      f"IVF {codec}, nlist={p['nlist']}"
                      + (f", pq_m={p['pq_m']}" if codec == "pq" else "")
                      + f", sample {p['sample_rows']:,} rows, {p['kmeans_iters']} k-means iterations | {seconds:.1f} |")
        refine = str(p["refine_factor"]) if p["refine_factor"] else "-"
        appliance_recall(api, queries, truth, nprobes=max(NPROBES))  # warms the executors' caches
        # graph codecs: one graph per partition (debian-minilm: one), searched with the breadth ef instead
        graph = codec.startswith("hnsw")
        knobs = [{"ef": ef} for ef in (0, *GRAPH_EF)] if graph else [
            {"nprobes": nprobes} for nprobes in sorted({*NPROBES, p["nprobes"]})]
        for knob_params in knobs:
            default = knob_params == {"ef": 0} if graph else knob_params["nprobes"] == p["nprobes"]
            params = {k: v for k, v in knob_params.items() if v}  # ef 0: the index's default (measured, >= 128)
            batched = appliance_recall(api, queries, truth, **params) if default else None
            one = measure(appliance_sender(api, TABLE, search_bodies(queries[:n], **params)), n)
            many = measure(appliance_sender(api, TABLE, search_bodies(queries[n:], **params)),
                           len(queries) - n, CLIENTS, meter, PASSES)
            name, value = next(iter(knob_params.items()))
            knob = (f"{name}={value or p.get('ef') or 'default'}" if graph else f"{name}={value}") + (
                " (default)" if default else "")
            rows.append(Row("appliance", f"IVF{p['nlist']} {codec}", knob, refine, both(one, many, truth), one, many,
                            batched))
            print(rows[-1].markdown(), flush=True)


def idle_cpu(meter: CpuMeter, seconds: float = IDLE_SECONDS) -> str:
    """What the processes spend with no query at all (health checks, heartbeats), in CPU ms per second."""
    meter.start()
    time.sleep(seconds)
    spent = meter.stop()
    return " · ".join(f"{process_label(k)} {v * 1000 / seconds:.1f}" for k, v in spent.items() if k != CpuMeter.CLIENT)


def bench_unbatched(api: Api, meter: CpuMeter, queries: np.ndarray, truth: np.ndarray, rows: list[Row],
                    one_client: int) -> None:
    """The flat index at its default nprobes once more, on a fleet whose query node runs every search alone
    (`search_batch_rows=0`): what cross-request batching is worth under 8 clients."""
    info, _ = build_index(api, TABLE, codec="flat")
    p = info["params"]
    appliance_recall(api, queries, truth, nprobes=p["nprobes"])  # warms this fleet's executor caches
    n = min(len(queries), one_client)
    one = measure(appliance_sender(api, TABLE, search_bodies(queries[:n], nprobes=p["nprobes"])), n)
    many = measure(appliance_sender(api, TABLE, search_bodies(queries[n:], nprobes=p["nprobes"])),
                   len(queries) - n, CLIENTS, meter, PASSES)
    rows.append(Row(UNBATCHED, f"IVF{p['nlist']} flat", f"nprobes={p['nprobes']} (default)", "-",
                    both(one, many, truth), one, many))
    print(rows[-1].markdown(), flush=True)


# --- LanceDB OSS, embedded ---------------------------------------------------------------------------------


def bench_lancedb(work: Path, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, rows: list[Row],
                  builds: list[str], one_client: int) -> None:
    import lancedb

    db = lancedb.connect(str(work / "lancedb"))
    data = pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), base.shape[1]),
        "row": np.arange(len(base)),
    })
    table = db.create_table(TABLE, data=data)
    started = time.perf_counter()
    table.create_index(metric="cosine", num_partitions=LANCEDB_PARTITIONS, num_sub_vectors=LANCEDB_SUB_VECTORS,
                       vector_column_name="vector", index_type="IVF_PQ")
    seconds = time.perf_counter() - started
    builds.append(f"| LanceDB {lancedb.__version__} embedded (`create_index`, all cores) | IVF_PQ, "
                  f"{LANCEDB_PARTITIONS} partitions, {LANCEDB_SUB_VECTORS} sub-vectors (defaults otherwise) | "
                  f"{seconds:.1f} |")
    n = min(len(queries), one_client)

    def sender(nprobes: int, offset: int = 0) -> Callable[[], Sender]:
        def make() -> Sender:
            def send(i: int) -> list[int]:
                # `_distance` named: without it LanceDB logs a deprecation warning on every query
                got = (table.search(queries[offset + i]).distance_type("cosine").nprobes(nprobes)
                       .refine_factor(LANCEDB_REFINE).limit(K).select(["row", "_distance"]).to_arrow())
                return got.column("row").to_pylist()
            return send
        return make

    for _ in range(2):  # warm: open the index, fill LanceDB's caches
        measure(sender(max(REFERENCE_NPROBES)), n)
    for nprobes in REFERENCE_NPROBES:
        one = measure(sender(nprobes), n)
        many = measure(sender(nprobes, n), len(queries) - n, CLIENTS, CpuMeter({}), PASSES)
        rows.append(Row(f"LanceDB {lancedb.__version__}", f"IVF{LANCEDB_PARTITIONS}_PQ{LANCEDB_SUB_VECTORS}",
                        f"nprobes={nprobes}", str(LANCEDB_REFINE), both(one, many, truth), one, many))
        print(rows[-1].markdown(), flush=True)


# --- faiss, in-process -------------------------------------------------------------------------------------


def faiss_sender(index) -> Callable[[np.ndarray], Callable[[], Sender]]:
    def for_queries(queries: np.ndarray) -> Callable[[], Sender]:
        def make() -> Sender:
            return lambda i: index.search(queries[i:i + 1], K)[1][0].tolist()
        return make
    return for_queries


def bench_faiss(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, rows: list[Row],
                builds: list[str]) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    dim, n = base.shape[1], len(queries)
    started = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, FAISS_NLIST, faiss.METRIC_INNER_PRODUCT)
    ivf.train(base)
    ivf.add(base)
    builds.append(f"| faiss {faiss.__version__} (1 thread) | IVF{FAISS_NLIST},Flat, inner product | "
                  f"{time.perf_counter() - started:.1f} |")
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(base)
    builds.append(f"| faiss {faiss.__version__} (1 thread) | HNSW32,Flat, efConstruction "
                  f"{hnsw.hnsw.efConstruction} | {time.perf_counter() - started:.1f} |")
    for nprobe in REFERENCE_NPROBES:
        ivf.nprobe = nprobe
        one = measure(faiss_sender(ivf)(queries), n)
        rows.append(Row(f"faiss {faiss.__version__}", f"IVF{FAISS_NLIST},Flat", f"nprobe={nprobe}", "-",
                        recall_at_k(one.ids, truth), one))
    for ef in HNSW_EF:
        hnsw.hnsw.efSearch = ef
        one = measure(faiss_sender(hnsw)(queries), n)
        rows.append(Row(f"faiss {faiss.__version__}", "HNSW32,Flat", f"efSearch={ef}", "-",
                        recall_at_k(one.ids, truth), one))


# --- PostgreSQL + pgvector, through psycopg ----------------------------------------------------------------


def bench_pgvector(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, tune: np.ndarray,
                   tune_truth: np.ndarray, rows: list[Row], builds: list[str], one_client: int) -> str:
    """A private PostgreSQL cluster (`pg_support`): the base set COPYed in, an HNSW index (m 16,
    ef_construction 64, cosine), then hnsw.ef_search picked by a rule on the tuning queries (never the
    measured ones): the smallest of PG_EF_SEARCH with recall@10 >= 0.95 there. Every ef_search is measured
    like the other systems (1 client, then 8 clients, one connection each); the rule's row says "(rule)".
    Returns the report's note (the rule's recalls, load and build times, or why it was skipped)."""
    reason = pg_support.skip_reason()
    if reason is not None:
        print(f"pgvector skipped: {reason}", flush=True)
        return f"PostgreSQL + pgvector was not measured in this run: {reason}."
    with pg_support.private_cluster() as cluster:
        loaded = pg_support.load_vectors(cluster, PG_TABLE, base)
        built = pg_support.build_hnsw(cluster, PG_TABLE, PG_M, PG_EF_CONSTRUCTION)
        with cluster.connect() as conn:
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
            workers = conn.execute("SHOW max_parallel_maintenance_workers").fetchone()[0]
        system = f"PostgreSQL {cluster.version} + pgvector {version}"
        builds.append(f"| {system} (`CREATE INDEX ... USING hnsw`, {workers} parallel maintenance workers) | "
                      f"HNSW m={PG_M}, ef_construction={PG_EF_CONSTRUCTION}, vector_cosine_ops (COPY of the "
                      f"rows before it: {loaded:.1f} s) | {built:.1f} |")
        sql = f"SELECT id FROM {PG_TABLE} ORDER BY embedding <=> %s LIMIT {K}"

        def sender(ef: int, batch: np.ndarray) -> Callable[[], Sender]:
            def make() -> Sender:
                conn = cluster.connect()
                conn.execute(f"SET hnsw.ef_search = {int(ef)}")
                conns.append(conn)
                return lambda i: [r[0] for r in conn.execute(sql, (batch[i],)).fetchall()]
            return make

        conns: list = []
        tuned: dict[int, float] = {}
        try:
            for ef in PG_EF_SEARCH:  # the rule, on the tuning queries (also warms the index's pages)
                tuned[ef] = recall_at_k(measure(sender(ef, tune), len(tune)).ids, tune_truth)
            chosen = next((ef for ef in PG_EF_SEARCH if tuned[ef] >= TARGET_RECALL), PG_EF_SEARCH[-1])
            for conn in conns:
                conn.close()
            conns.clear()
            meter = CpuMeter({"postgres": cluster.postmaster_pid})
            n = min(len(queries), one_client)
            for ef in PG_EF_SEARCH:
                one = measure(sender(ef, queries), n)
                many = measure(sender(ef, queries[n:]), len(queries) - n, CLIENTS, meter, PASSES)
                for conn in conns:
                    conn.close()
                conns.clear()
                rows.append(Row(system, f"HNSW m={PG_M}, efc={PG_EF_CONSTRUCTION}",
                                f"ef_search={ef}" + (" (rule)" if ef == chosen else ""), "-",
                                both(one, many, truth), one, many))
                print(rows[-1].markdown(), flush=True)
        finally:
            for conn in conns:
                conn.close()
    recalls = ", ".join(f"{ef}: {r:.3f}" for ef, r in tuned.items())
    return (f"pgvector's `hnsw.ef_search` is chosen by a rule on {len(tune):,} other dev queries (numbers "
            f"{TUNE_FROM:,} on, never measured): the smallest of {', '.join(map(str, PG_EF_SEARCH))} with recall@10 "
            f">= {TARGET_RECALL} there; recall@10 on them: {recalls}; chosen {chosen}.")


# --- index build on a synthetic set ------------------------------------------------------------------------


def bench_synthetic_build(work: Path, api: Api, rows: int) -> tuple[str, list[str]]:
    import faiss
    import lance

    started = time.perf_counter()
    data = clustered(rows, 128)
    generated = time.perf_counter() - started
    loaded = load_table(api, "synthetic", data, "l2", SYNTHETIC_BATCH)
    info, seconds = build_index(api, "synthetic", codec="flat")
    p = info["params"]
    builds = [("appliance (`POST .../index`, query node, all cores: `build_threads` 0)",
               f"IVF{p['nlist']},flat, sample {p['sample_rows']:,} rows, {p['kmeans_iters']} k-means iterations",
               seconds)]

    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(128), 128, p["nlist"])
    index.cp.niter = p["kmeans_iters"]
    sample = data[np.random.default_rng(0).choice(rows, min(rows, p["sample_rows"]), replace=False)]
    index.train(sample)
    index.add(data)
    builds.append((f"faiss {faiss.__version__} (1 thread)", f"IVF{p['nlist']},Flat, same sample size and iterations",
                   time.perf_counter() - started))

    table = pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), 128),
                      "row": np.arange(rows)})
    dataset = lance.write_dataset(table, str(work / "synthetic.lance"))
    del table
    started = time.perf_counter()
    dataset.create_index("vector", index_type="IVF_FLAT", num_partitions=p["nlist"], metric="l2")
    builds.append((f"pylance {lance.__version__} (`create_index`, all cores)",
                   f"IVF_FLAT, {p['nlist']} partitions (defaults otherwise)", time.perf_counter() - started))
    lines = [f"| {system} | {index} | {secs:.1f} | {secs / builds[0][2]:.2f} |" for system, index, secs in builds]
    note = (f"{rows:,} x 128 float32, {1024} Gaussian clusters of uneven size (`bench/synthetic.py`, seed 0; "
            f"generated in {generated:.1f} s, loaded through the HTTP API as Arrow IPC in {loaded:.1f} s)")
    return note, lines


# --- the report --------------------------------------------------------------------------------------------


def at_recall(rows: list[Row], system: str, index: str | None = None, target: float = 0.95) -> Row | None:
    """The cheapest setting (fewest probes: rows are in increasing order) of a system reaching `target`."""
    for row in rows:
        if (row.system.startswith(system) and row.system != UNBATCHED and (index is None or index in row.index)
                and row.recall >= target):
            return row
    return None


def summary(rows: list[Row]) -> str:
    """The issues' targets (15: one hop, a lean query node; 16: scans at faiss speed), each at the first
    (cheapest) setting of a system with recall@10 >= 0.95, and pgvector at the ef_search its rule chose."""
    lines = ["At the first (fewest-probes) setting of each with recall@10 >= 0.95, in this run (targets of issue "
             "15 / issue 16 in brackets; CPU: milliseconds per query over the 8-client phase):", ""]
    lance_row = at_recall(rows, "LanceDB")
    pg_row = next((r for r in rows if r.system.startswith("PostgreSQL") and r.knob.endswith("(rule)")), None)
    exact = next((r for r in rows if r.system == "appliance" and r.index.startswith("none")), None)
    for codec in CODECS:
        row = at_recall(rows, "appliance", codec)
        if row is None:
            if any(r.index.endswith(codec) for r in rows):
                lines.append(f"- appliance IVF {codec}: recall@10 never reached 0.95 at the measured nprobes.")
            continue
        one, many = row.one, row.many
        text = (f"- appliance IVF {codec} at {row.knob} (recall {row.recall:.3f}): p50 {one.p(50):.2f} ms with "
                f"1 client [<= 4")
        text += f" / <= pgvector's {pg_row.one.p(50):.2f}]" if pg_row else "]"
        text += f"; {many.qps:,.0f} QPS with {CLIENTS} clients [>= 600"
        text += f" / >= pgvector's {pg_row.many.qps:,.0f}]" if pg_row else "]"
        if lance_row is not None:
            text += f", {many.qps / lance_row.many.qps:.2f}x LanceDB's [>= 3x / >= 5x]"
        if many.cpu and many.server_cpu is not None:
            query = sum(v for k, v in many.cpu.items() if k.startswith("query-"))
            text += (f"; CPU of all appliance processes {many.server_cpu:.2f} ms [<= 2.0 / <= 1.2], of which the "
                     f"query node {query:.2f} [<= 0.9], and the client {many.cpu[CpuMeter.CLIENT]:.2f}")
        if exact is not None:
            text += f"; p50 {one.p(50) / exact.one.p(50):.2f}x the appliance's own exact scan"
        lines.append(text + ".")
    batched = next((r for r in rows if r.system == "appliance" and r.index.endswith("flat")
                    and r.knob.endswith("(default)")), None)
    unbatched = next((r for r in rows if r.system == UNBATCHED), None)
    if batched is not None and unbatched is not None and batched.many and unbatched.many:
        on, off = batched.many, unbatched.many
        lines.append(f"- Cross-request batching (flat, default nprobes, {CLIENTS} clients): {on.qps:,.0f} QPS with "
                     f"it, {off.qps:,.0f} without ({on.qps / off.qps:.2f}x); p50 {on.p(50):.1f} vs {off.p(50):.1f} "
                     f"ms. With 1 client it changes nothing by design: p50 {batched.one.p(50):.2f} vs "
                     f"{unbatched.one.p(50):.2f} ms.")
    if pg_row is not None:
        cpu = {"postgres": float("nan"), CpuMeter.CLIENT: float("nan"), **(pg_row.many.cpu or {})}
        lines.append(f"- {pg_row.system} at {pg_row.knob.removesuffix(' (rule)')} (chosen on other queries; recall "
                     f"{pg_row.recall:.3f} on these): p50 {pg_row.one.p(50):.2f} ms with 1 client, "
                     f"{pg_row.many.qps:,.0f} QPS with {CLIENTS} clients; CPU: postgres processes "
                     f"{cpu['postgres']:.2f} ms, the client {cpu[CpuMeter.CLIENT]:.2f}.")
    if lance_row is not None:
        cpu = lance_row.many.cpu or {}
        lines.append(f"- LanceDB at {lance_row.knob} (recall {lance_row.recall:.3f}): p50 "
                     f"{lance_row.one.p(50):.2f} ms, {lance_row.many.qps:,.0f} QPS with {CLIENTS} threads; CPU of the "
                     f"benchmark process (client and embedded engine) {cpu.get(CpuMeter.CLIENT, float('nan')):.2f} ms.")
    elif any(r.system.startswith("LanceDB") for r in rows):
        lines.append("- LanceDB never reached recall@10 0.95 at the measured nprobes.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="first N base vectors only (0: all)")
    parser.add_argument("--queries", type=int, default=None,
                        help=f"dev queries measured (recall is over them all; at most {TUNE_FROM}), default {QUERIES}")
    parser.add_argument("--one-client", type=int, default=None,
                        help=f"how many of them 1 client sends; 8 clients send the rest (default {ONE_CLIENT_QUERIES})")
    parser.add_argument("--synthetic-rows", type=int, default=None, help="0 skips the synthetic build (default 1M)")
    parser.add_argument("--codecs", default=None, help=f"the appliance's codecs, comma-separated (default all: "
                        f"{','.join(CODECS)}); any but all also skips the batching-off fleet")
    parser.add_argument("--skip", default="", help="comma-separated: appliance,lancedb,faiss,pgvector")
    parser.add_argument("--quick", action="store_true",
                        help="development: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                        + " unless given")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write it")
    args = parser.parse_args()
    defaults = {"rows": 0, "queries": QUERIES, "one_client": ONE_CLIENT_QUERIES, "synthetic_rows": 1_000_000,
                "codecs": ",".join(CODECS)}
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    codecs = tuple(c for c in args.codecs.split(",") if c)
    if args.queries > TUNE_FROM:
        parser.error(f"--queries: at most {TUNE_FROM} (dev queries {TUNE_FROM:,} on tune pgvector's ef_search)")
    skip = set(filter(None, args.skip.split(",")))
    if not (SHARED_DATA / "base.npy").exists():
        print(f"{SHARED_DATA} is not present")
        return 1
    started, load = time.time(), os.getloadavg()
    base = np.load(SHARED_DATA / "base.npy")
    dev = np.load(SHARED_DATA / "dev_queries.npy")
    queries, tune = dev[:args.queries], dev[TUNE_FROM:]
    if args.rows and args.rows < len(base):
        base = base[:args.rows].copy()
        truth, tune_truth = exact_truth(base, queries), exact_truth(base, tune)
    else:
        dev_truth = np.load(SHARED_DATA / "dev_gt_ids.npy")[:, :K]
        truth, tune_truth = dev_truth[:args.queries], dev_truth[TUNE_FROM:]
    rows: list[Row] = []
    builds: list[str] = []
    pg_note = idle = ""

    def publish(synthetic_note: str = "", synthetic: list[str] | None = None) -> str:
        """Write the section as it stands (again after the synthetic build, so a late run keeps its tables)."""
        text = report(base, queries, rows, builds, synthetic_note, synthetic or [], started, load, args.one_client,
                      pg_note, len(tune), idle)
        if not args.no_write:
            write_section("search", text)
        print("\n".join(builds), flush=True)
        return text

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        if "appliance" not in skip:
            # health checks at the default interval (local_fleet's 0.2 s, for quick failover in tests, costs CPU)
            with running_fleet(work, free_port_block(3), indexers=0, health_interval=HEALTH_INTERVAL) as (api, fleet):
                load_table(api, TABLE, base, "cosine", FRAGMENT_ROWS)
                meter = CpuMeter(fleet_processes(fleet))
                bench_appliance(api, meter, queries, truth, rows, builds, args.one_client, codecs)
                idle = idle_cpu(meter)
            if set(codecs) == set(CODECS):
                with running_fleet(work, free_port_block(3), indexers=0, search_batch_rows=0,
                                   health_interval=HEALTH_INTERVAL) as (api, fleet):
                    bench_unbatched(api, CpuMeter(fleet_processes(fleet)), queries, truth, rows, args.one_client)
            print(f"appliance done at {(time.time() - started) / 60:.1f} min", flush=True)
        if "pgvector" not in skip:
            pg_note = bench_pgvector(base, queries, truth, tune, tune_truth, rows, builds, args.one_client)
            print(f"pgvector done at {(time.time() - started) / 60:.1f} min", flush=True)
        if "lancedb" not in skip:
            bench_lancedb(work, base, queries, truth, rows, builds, args.one_client)
            print(f"LanceDB done at {(time.time() - started) / 60:.1f} min", flush=True)
        if "faiss" not in skip:
            bench_faiss(base, queries, truth, rows, builds)
            print(f"faiss done at {(time.time() - started) / 60:.1f} min", flush=True)
        text = publish()
        if args.synthetic_rows:
            with running_fleet(work / "synthetic", free_port_block(3), indexers=0) as (api, _fleet):
                text = publish(*bench_synthetic_build(work, api, args.synthetic_rows))
    print(text)
    return 0


def report(base: np.ndarray, queries: np.ndarray, rows: list[Row], builds: list[str], synthetic_note: str,
           synthetic: list[str], started: float, load: tuple[float, float, float], one_client: int,
           pg_note: str, tune_queries: int, idle: str) -> str:
    when = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    n = min(len(queries), one_client)
    search_table = "\n".join([
        "| system | index | probes | refine | recall@10 | recall@10, batches of 100 | p50 ms, 1 client "
        "| p99 ms, 1 client | QPS, 1 client "
        f"| p50 ms, {CLIENTS} clients | p99 ms, {CLIENTS} clients | QPS, {CLIENTS} clients "
        f"| CPU ms/query, servers | CPU ms/query, client | CPU ms/query by server process |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(r.markdown() for r in rows),
    ])
    build_table = "\n".join(["| system | index | build s |", "| --- | --- | ---: |", *builds])
    synthetic_part = ""
    if synthetic:
        synthetic_part = "\n".join([
            "### Index build on a synthetic set", "", f"{synthetic_note}; metric l2.", "",
            "| system | index | build s | time / appliance's |", "| --- | --- | ---: | ---: |", *synthetic, ""])
    busy = ""
    if max(load[0], os.getloadavg()[0]) > (os.cpu_count() or 1):
        busy = ("\n\n**Busy machine**: the load average was above the number of cores during this run, so other "
                "jobs took CPU from every system measured: latency and QPS are low and uneven here, the CPU "
                "milliseconds per query hold.")
    pg_settings = ", ".join(f"{k}={v}" for k, v in pg_support.SERVER_SETTINGS.items())
    return f"""## Search: IVF recall, latency and QPS (`bench/bench_search.py`)

{machine_line()} Run started {when} and took {(time.time() - started) / 60:.0f} min; load average
(1/5/15 min) {load_average(load)} when it started, {load_average()} when this was written.{busy}

**Noise.** The 2 cores are shared with other jobs (other agents' builds and tests ran beside this one), and
the benchmark client, the servers and both executors share them too, so latency and QPS move by tens of
percent from run to run and with the load. Compare rows of this one run only, never with another run or
another section. **CPU milliseconds per query** hold better on a busy machine: for every process of a
system (a gunicorn master and its workers, the postmaster and all its backends: the process and its
descendants), its CPU time over the {CLIENTS}-client phase (each process's exact CPU clock, plus children
reaped in between from /proc/PID/stat), divided by the queries answered; "client" is the benchmark process
itself (`time.process_time()`: its {CLIENTS} client threads, and for LanceDB the embedded engine too).
"servers" is every process but the client (appliance: query node and executors; pgvector: postgres).
Idle, after its last setting, the appliance's processes spent (CPU ms per second, over {IDLE_SECONDS:.0f} s):
{idle or "not measured"}.

Data set: `debian-minilm`, {len(base):,} x {base.shape[1]} float32, cosine; the first {len(queries):,} dev
queries; recall@10 against the exact top-10 (`dev_gt_ids.npy`). Each setting: 1 client sends the first
{n:,} queries one after another, then {CLIENTS} concurrent clients send the other {len(queries) - n:,}
together, {PASSES} times over (a window of seconds, steadier on a shared machine; latency, QPS and CPU over
all passes, what each query found from its first); "recall@10" is over all {len(queries):,} of them, one
query per search.

- **appliance**: 1 query node and 2 executors on loopback (health checks every {HEALTH_INTERVAL:g} s, the
  default); the table loaded through the HTTP API in
  fragments of {FRAGMENT_ROWS:,} rows; indexes built with `POST /api/v1/tables/{TABLE}/index` and default
  parameters (nlist about sqrt(rows), default nprobes nlist/6, PQ with dimension/8 sub-vectors and refine
  factor 10, SQ8 without refine); caches warm. One query per HTTP request (JSON,
  k=10, payload column `row`, bodies encoded before the clock starts); {CLIENTS} clients = {CLIENTS}
  threads of the benchmark process, each with its own keep-alive connection. "recall@10, batches of 100"
  (at the default nprobes only) is the same queries sent {RECALL_BATCH} to a request (`vectors`): each
  query of a batch scans only its own nprobes partitions, so it must equal the one-query recall (an
  earlier planner scanned the union for every query and read 1.000 here).
  "none (exact scan)" is `bypass_vector_index`, the first {min(n, EXACT_QUERIES)} queries, 1 client.
  The query node batches concurrent searches of one shape (`search_batch_rows`, on by default);
  "{UNBATCHED}" is the flat index at its default nprobes on a second fleet with `search_batch_rows=0`.
- **PostgreSQL + pgvector**: a private cluster started by the benchmark on a loopback port (`bench/pg_support.py`;
  `../shared/tools/pgvector-setup.sh` installs PostgreSQL 15 and pgvector), settings beside the defaults:
  {pg_settings}; the rows loaded with binary COPY, an HNSW index (m={PG_M}, ef_construction={PG_EF_CONSTRUCTION},
  `vector_cosine_ops`), then `SELECT id ... ORDER BY embedding <=> %s LIMIT {K}` through psycopg 3 and the
  pgvector adapter, one query per statement; {CLIENTS} clients = {CLIENTS} threads, each with its own
  connection. {pg_note}
- **LanceDB** OSS embedded on a local folder, in the benchmark process; {CLIENTS} clients = {CLIENTS}
  threads sharing one table handle.
- **faiss** in the benchmark process, one query at a time on one thread, all {len(queries):,} queries.

LanceDB and faiss pay no network, JSON, query-node/executor hop or payload fetch: they are reference points,
not like-for-like; pgvector answers through its own network client, as the appliance does through HTTP.
p50/p99: median and 99th percentile of per-request latency; QPS: queries over wall time. No parameter
of a row is tuned on the measured queries except where a row is picked below as "the first setting with
recall@10 >= 0.95" (pgvector's "(rule)" row is chosen on {tune_queries:,} other queries).

{summary(rows)}

{search_table}

### Index build times (`debian-minilm`)

{build_table}

{synthetic_part}"""


if __name__ == "__main__":
    raise SystemExit(main())
