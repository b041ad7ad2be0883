"""The compute kernels against the obvious numpy code and against faiss, on debian-minilm.

Run it with `make bench-kernels`; it writes the "kernels" section of docs/BENCHMARKS.md.

Four operations, each timed against its baselines in the same process and the same run, with the same
thread budget (`kernels.set_thread_budget`, which caps numpy's BLAS and faiss's OpenMP alike):

    exact top-10   1,000 queries x 61,666 vectors: kernels.search_block (metric dot on the unit vectors,
                   i.e. cosine), numpy (q @ x.T, argpartition, argsort), faiss IndexFlatIP.search
    IVF assignment all 61,666 vectors to 256 centroids: kernels.assign, numpy (expanded l2, argmin),
                   faiss IndexFlatL2.search k=1
    k-means        256 centroids, the same iterations and the same initial rows: kernels.kmeans, numpy
                   Lloyd, faiss.Kmeans; time and the objective (sum of squared distances) reached
    PQ scan        1,000 queries over 61,666 PQ codes (m=48, 8 bits; faiss's trained codebooks and codes
                   for both): kernels.pq_distances + kernels.topk, numpy (the same lookup tables,
                   argpartition), faiss IndexPQ.search

Then each op with a faiss route (`kernels.cpu_faiss.OPS`) against the numpy route in the same process
(KERNELS_CPU=auto vs numpy), at 1 thread, in CPU time (time.process_time: the machine is shared, and CPU
time is what a loaded core does not inflate): probing, flat / SQ8 / PQ list scans one query at a time
(nprobe 32 of IVF256), k-means, PQ training and PQ encoding.

Last, a full index build of a synthetic 1,000,000 x 128 set (`bench/synthetic.py`): the appliance's
`build_full` on a local Lance table (k-means, codec training, assignment and encoding of every row, objects
written), step by step, beside faiss IndexIVFFlat train + add and pylance `create_index` (IVF_FLAT and
IVF_PQ with the same nlist and sub-vectors), all in the same run with the same thread budget.

Every figure is the median of REPEATS runs; the runs of one operation are interleaved (A, B, C, A, B, C,
...) so that load from other processes on the machine falls on every contender alike. `--quick` (for
development) runs every section on a fraction of the data, 3 repeats, a 100,000-row build, and writes no
report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from report import machine_line, write_section  # noqa: E402

import kernels  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "debian-minilm"
QUERIES = 1_000
K = 10
NLIST = 256
KMEANS_ITERS = 10
PQ_M = 48
NPROBE = 32
BACKEND_QUERIES = 200
"""Queries of the per-op table, scanned one at a time."""
SEED = 1
OPS = ("topk", "assign", "kmeans", "pq", "backends", "build")


def cpu_timed(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU seconds (time.process_time) of each contender over `repeats` interleaved rounds, after one
    untimed warm-up each."""
    for run in contenders.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def timed(contenders: dict[str, Callable[[], object]], repeats: int, warm_up: bool = True) -> dict[str, float]:
    """Median seconds of each contender over `repeats` interleaved rounds (after one untimed warm-up each,
    unless the operation is long enough that a warm-up only adds minutes)."""
    for run in contenders.values() if warm_up else ():
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def table(title: str, medians: dict[str, float], baselines: tuple[str, ...], extra: dict[str, str] | None = None,
          extra_header: str = "") -> str:
    head = "| implementation | median s | " + " | ".join(f"ratio vs {b}" for b in baselines)
    head += f" | {extra_header} |" if extra else " |"
    rule = "| --- | ---: | " + " | ".join("---:" for _ in baselines) + (" | ---: |" if extra else " |")
    rows = [f"**{title}**", "", head, rule]
    for name, seconds in medians.items():
        ratios = " | ".join(f"{seconds / medians[b]:.2f}" for b in baselines)
        rows.append(f"| {name} | {seconds:.3f} | {ratios} |" + (f" {extra[name]} |" if extra else ""))
    return "\n".join(rows)


# ------------------------------------------------------------------------------------- numpy baselines


def numpy_topk_ip(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q @ x.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(part, order, axis=1), 1 - np.take_along_axis(top, order, axis=1)


def numpy_assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2 * (x @ centroids.T) + (centroids * centroids).sum(1)[None, :]
    return d.argmin(axis=1)


def numpy_kmeans(x: np.ndarray, initial: np.ndarray, iters: int) -> np.ndarray:
    centroids = initial.copy()
    for _ in range(iters):
        labels = numpy_assign(x, centroids)
        sums = np.zeros_like(centroids, dtype=np.float64)
        np.add.at(sums, labels, x)
        counts = np.bincount(labels, minlength=len(centroids))
        centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids).astype(np.float32)
    return centroids


def numpy_pq_topk(q: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, k: int) -> np.ndarray:
    m, _, sub = codebooks.shape
    parts = q.reshape(len(q), m, sub)
    tables = ((parts[:, :, None, :] - codebooks[None]) ** 2).sum(-1)  # [nq, m, 256]
    distances = np.zeros((len(q), len(codes)), np.float32)
    for j in range(m):
        distances += tables[:, j, codes[:, j]]
    part = np.argpartition(distances, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(distances, part, axis=1), axis=1), axis=1)


def objective(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(kernels.assign(x, centroids, device="cpu")[1].astype(np.float64).sum())


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of ids two top-k lists have in common (ties at the kth place may differ)."""
    return float(np.mean([len(set(r) & set(s)) / len(r) for r, s in zip(a.tolist(), b.tolist(), strict=True)]))


# ------------------------------------------------------------------------------- faiss vs numpy per op


@contextlib.contextmanager
def cpu_route(choice: str) -> Iterator[None]:
    saved = os.environ.get("KERNELS_CPU")
    os.environ["KERNELS_CPU"] = choice
    try:
        yield
    finally:
        os.environ.pop("KERNELS_CPU") if saved is None else os.environ.__setitem__("KERNELS_CPU", saved)


def routed(run: Callable[[], object], choice: str) -> Callable[[], object]:
    def go() -> object:
        with cpu_route(choice):
            return run()
    return go


def bench_backends(x: np.ndarray, q: np.ndarray, repeats: int, quick: bool) -> str:
    """Each op with a faiss route, faiss (KERNELS_CPU=auto) vs numpy, 1 thread, median CPU ms."""
    from kernels import cpu_faiss

    kernels.set_thread_budget(1)
    n, dim = x.shape
    ids = np.arange(n, dtype=np.uint64)
    centroids = kernels.kmeans(x[::4], NLIST, metric="dot", iters=5, seed=SEED, device="cpu")
    labels, _ = kernels.assign(x, centroids, metric="dot", device="cpu")
    members = [np.flatnonzero(labels == c) for c in range(NLIST)]
    lo, scale = kernels.sq8_train(x)
    train = x[np.random.default_rng(SEED).choice(n, min(n, 256 * 64), replace=False)]
    codebooks = kernels.pq_train(train, PQ_M, iters=5, seed=SEED, device="cpu")
    codebooks4 = kernels.pq_train(train, 2 * PQ_M, nbits=4, iters=5, seed=SEED, device="cpu")  # pq4: as many bytes
    encoded = {"flat": x, "sq8": kernels.sq8_encode(x, lo, scale), "pq": kernels.pq_encode(x, codebooks),
               "pq4": kernels.pq4_pack(kernels.pq_encode(x, codebooks4))}
    params = {"flat": {}, "sq8": {"sq8_lo": lo, "sq8_scale": scale}, "pq": {"pq_codebooks": codebooks},
              "pq4": {"pq_codebooks": codebooks4}}
    probed = kernels.probe(q, centroids, NPROBE, metric="dot")
    # each partition's arrays once (as an executor caches them), shared by every query that probes it
    parts = {codec: [(ids[rows], np.ascontiguousarray(codes[rows]), None) for rows in members]
             for codec, codes in encoded.items()}
    lists = {codec: [[parts[codec][c] for c in row] for row in probed] for codec in encoded}

    def per_query(codec: str, metric: str) -> Callable[[], object]:
        return lambda: [kernels.scan_lists(q[r : r + 1], lists[codec][r], K, codec=codec, params=params[codec],
                                           metric=metric) for r in range(len(q))]

    km_rows = x[: 10_000 if quick else 30_000]
    enc_rows = x[: 10_000 if quick else 30_000]
    cases = [  # (op, workload, run, per-query: divide by the queries)
        ("probe", f"1 query x {NLIST} centroids (dot)",
         lambda: [kernels.probe(q[r : r + 1], centroids, NPROBE, metric="dot") for r in range(len(q))], True),
        ("scan_lists/flat", f"1 query x {NPROBE} lists (~{n // NLIST} rows), dot, k {K}", per_query("flat", "dot"),
         True),
        ("scan_lists/sq8", f"1 query x {NPROBE} lists, SQ8, dot (cosine), k {K}", per_query("sq8", "dot"), True),
        ("scan_lists/sq8", f"1 query x {NPROBE} lists, SQ8, l2, k {K}", per_query("sq8", "l2"), True),
        ("scan_lists/pq", f"1 query x {NPROBE} lists, PQ m={PQ_M}, l2, k {K}", per_query("pq", "l2"), True),
        ("scan_lists/pq4", f"1 query x {NPROBE} lists, PQ4 (4-bit) m={2 * PQ_M}, l2, k {K}", per_query("pq4", "l2"),
         True),
        ("kmeans", f"{len(km_rows):,} x {dim}, {NLIST} centroids, 5 iterations",
         lambda: kernels.kmeans(km_rows, NLIST, iters=5, seed=SEED, tol=0, device="cpu"), False),
        ("pq_train", f"{len(train):,} x {dim}, m={PQ_M}, 5 iterations",
         lambda: kernels.pq_train(train, PQ_M, iters=5, seed=SEED, device="cpu"), False),
        ("pq_encode", f"{len(enc_rows):,} x {dim}, m={PQ_M}",
         lambda: kernels.pq_encode(enc_rows, codebooks, device="cpu"), False),
    ]
    rows = ["| op | workload | faiss ms | numpy ms | numpy / faiss | backend used |",
            "| --- | --- | ---: | ---: | ---: | --- |"]
    chosen = cpu_faiss.backends()
    for op, workload, run, per in cases:
        slow = op in ("kmeans", "pq_train")
        medians = cpu_timed({"faiss": routed(run, "auto"), "numpy": routed(run, "numpy")},
                            max(1, repeats // 2) if slow else repeats)
        scale_ms = 1e3 / (len(q) if per else 1)
        f_ms, n_ms = medians["faiss"] * scale_ms, medians["numpy"] * scale_ms
        rows.append(f"| {op} | {workload} | {f_ms:.3f} | {n_ms:.3f} | {n_ms / f_ms:.2f} | {chosen.get(op, '?')} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join([f"**faiss vs numpy per op: 1 thread, median CPU time, {len(q)} queries one at a time**", "",
                      *rows])


# ------------------------------------------------------------------------------------ full index build


def bench_build(rows: int, threads: int, work: Path) -> tuple[str, float]:
    """The appliance's build_full on a local Lance table (flat and PQ) beside faiss IVFFlat train + add and
    pylance create_index (IVF_FLAT, IVF_PQ), same nlist: the report's table, and pylance's IVF_FLAT time."""
    import lance
    import pyarrow as pa
    from synthetic import clustered

    from appliance.index import builder, codec
    from appliance.index.params import IndexParams
    from appliance.index.store import IndexStore
    from appliance.storage import StorageRoot, TableStore

    kernels.set_thread_budget(threads)
    faiss.omp_set_num_threads(threads)
    data = clustered(rows, 128)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), 128)
    root = StorageRoot.parse(str(work / "root"))
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("synthetic", 128, "l2", {"row": "int64"})
    for start in range(0, rows, 250_000):
        chunk = slice(start, min(rows, start + 250_000))
        tables.append("synthetic", pa.table({"vector": vectors[chunk], "row": np.arange(chunk.start, chunk.stop)}))
    dataset = lance.write_dataset(pa.table({"vector": vectors, "row": np.arange(rows)}), str(work / "pylance.lance"))

    steps: dict[str, float] = {}

    def step(name: str, fn: Callable) -> Callable:
        def run(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - started
        return run

    results: list[tuple[str, str, float, float]] = []  # system, index, wall s, CPU s
    p = {}
    originals = (kernels.kmeans, kernels.assign, codec.train, codec.encode)
    breakdown: dict[str, str] = {}
    step_times: dict[str, dict[str, float]] = {}
    for codec_name in ("flat", "pq"):
        steps.clear()
        kernels.kmeans, kernels.assign = step("k-means", originals[0]), step("assign", originals[1])
        codec.train, codec.encode = step("codec training", originals[2]), step("encode", originals[3])
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            manifest = builder.build_full(tables, indexes, "synthetic", IndexParams(codec=codec_name))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            kernels.kmeans, kernels.assign, codec.train, codec.encode = originals
        p = manifest.params
        rest = wall - sum(steps.values())
        breakdown[codec_name] = ", ".join(f"{name} {secs:.1f} s" for name, secs in steps.items()) + \
            f", reading + writing {rest:.1f} s"
        step_times[codec_name] = {**steps, "reading + writing": rest}
        results.append(("appliance `build_full` (kernels, local Lance table)",
                        f"IVF{p['nlist']},{codec_name}" + (f" m={p['pq_m']}" if codec_name == "pq" else "")
                        + f", sample {p['sample_rows']:,}, {p['kmeans_iters']} iterations", wall, cpu))
        print(results[-1], breakdown[codec_name], file=sys.stderr, flush=True)

    wall, cpu = time.perf_counter(), time.process_time()
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(128), 128, p["nlist"])
    index.cp.niter = p["kmeans_iters"]
    index.cp.max_points_per_centroid = 1 << 30
    index.train(data[np.random.default_rng(0).choice(rows, min(rows, p["sample_rows"]), replace=False)])
    index.add(data)
    results.append((f"faiss {faiss.__version__}", f"IVF{p['nlist']},Flat train + add, same sample and iterations",
                    time.perf_counter() - wall, time.process_time() - cpu))
    print(results[-1], file=sys.stderr, flush=True)
    del index
    pylance_flat = 0.0
    for kind, extra in (("IVF_FLAT", {}), ("IVF_PQ", {"num_sub_vectors": p["pq_m"]})):
        wall, cpu = time.perf_counter(), time.process_time()
        dataset.create_index("vector", index_type=kind, num_partitions=p["nlist"], metric="l2", replace=True,
                             **extra)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        pylance_flat = pylance_flat or wall
        results.append((f"pylance {lance.__version__} `create_index`", f"{kind}, {p['nlist']} partitions"
                        + (f", {p['pq_m']} sub-vectors" if extra else ""), wall, cpu))
        print(results[-1], file=sys.stderr, flush=True)
    lines = [f"**Full index build: {rows:,} x 128 (`bench/synthetic.py`), thread budget {threads}**", "",
             "| system | index | wall s | CPU s | wall vs pylance IVF_FLAT |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {system} | {index} | {wall:.1f} | {cpu:.1f} | {wall / pylance_flat:.2f} |"
              for system, index, wall, cpu in results]
    lines += ["", *(f"Steps of the appliance's {name} build: {text}." for name, text in breakdown.items())]
    ours = results[0][2]
    slowest = max(step_times["flat"], key=step_times["flat"].get)
    verdict = "at or under" if ours <= pylance_flat else "over"
    lines += ["", f"Issue 16's target (the appliance's 1M x 128 build at or under pylance's time): the {rows:,}-row "
                  f"flat build took {ours:.1f} s against pylance IVF_FLAT's {pylance_flat:.1f} s, {verdict} it; "
                  f"its largest step is {slowest} ({step_times['flat'][slowest]:.1f} s)."]
    return "\n".join(lines), pylance_flat


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=OPS, help="run one section, no report")
    parser.add_argument("--quick", action="store_true",
                        help="every section on a fraction of the data, 3 repeats, a 100,000-row build; no report")
    parser.add_argument("--build-rows", type=int, default=None, help="rows of the build section (1,000,000)")
    parser.add_argument("--build-threads", type=int, default=None,
                        help="thread budget of every builder in the build section (default --threads)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 3)
    build_rows = args.build_rows or (100_000 if args.quick else 1_000_000)
    kernels.set_thread_budget(args.threads)  # numpy BLAS and faiss OpenMP alike

    x = np.ascontiguousarray(np.load(DATA / "base.npy"), dtype=np.float32)
    queries = 100 if args.quick else QUERIES
    if args.quick:
        x = x[:20_000]
    q = np.ascontiguousarray(np.load(DATA / "dev_queries.npy")[:queries], dtype=np.float32)
    ids = np.arange(len(x), dtype=np.uint64)
    n, dim = x.shape
    load_before = os.getloadavg()[0]
    sections: list[str] = []
    ops = [args.only] if args.only else list(OPS)

    build_note, build_section = "", ""
    # first, while the load is what it was when the run started (the sections below add their own)
    if "build" in ops:
        load = os.getloadavg()[0]
        if not args.quick and load >= 3:
            build_note = f"(The build section was skipped: load average {load:.1f} at its start, 3 or more.)"
            print(build_note, file=sys.stderr)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-kernels-build-") as work:
                text, _ = bench_build(build_rows, args.build_threads or args.threads, Path(work))
            build_section = text + (f"\n\nLoad average {load:.1f} at the start of the build section, "
                                    f"{os.getloadavg()[0]:.1f} at its end.")

    if "topk" in ops:
        flat = faiss.IndexFlatIP(dim)
        flat.add(x)
        medians = timed({
            "kernels.search_block (dot)": lambda: kernels.search_block(q, x, ids, "dot", K),
            "kernels.search_block (cosine)": lambda: kernels.search_block(q, x, ids, "cosine", K),
            "numpy (q @ x.T, argpartition, argsort)": lambda: numpy_topk_ip(q, x, K),
            "faiss IndexFlatIP.search": lambda: flat.search(q, K),
        }, args.repeats)
        ours = kernels.search_block(q, x, ids, "dot", K)[0].astype(np.int64)
        agree = {"kernels.search_block (dot)": f"{overlap(ours, flat.search(q, K)[1]):.4f}",
                 "kernels.search_block (cosine)": f"{overlap(kernels.search_block(q, x, ids, 'cosine', K)[0].astype(np.int64), ours):.4f}",  # noqa: E501
                 "numpy (q @ x.T, argpartition, argsort)": f"{overlap(numpy_topk_ip(q, x, K)[0], ours):.4f}",
                 "faiss IndexFlatIP.search": "1"}
        sections.append(table(f"Exact top-{K}: {queries:,} queries x {n:,} vectors", medians,
                              ("faiss IndexFlatIP.search", "numpy (q @ x.T, argpartition, argsort)"), agree,
                              "top-10 overlap with faiss / kernels"))
        ratio = medians["kernels.search_block (dot)"] / medians["faiss IndexFlatIP.search"]
        print(f"exact top-k: kernels / faiss = {ratio:.2f}", file=sys.stderr)

    if "assign" in ops or "kmeans" in ops:
        initial = x[np.random.default_rng(SEED).permutation(n)[:NLIST]]  # the rows kernels.kmeans starts from

    if "assign" in ops:
        centroids = kernels.kmeans(x[:: 4], NLIST, iters=5, seed=SEED, device="cpu")
        quantizer = faiss.IndexFlatL2(dim)
        quantizer.add(centroids)
        medians = timed({
            "kernels.assign": lambda: kernels.assign(x, centroids, device="cpu"),
            "numpy (expanded l2, argmin)": lambda: numpy_assign(x, centroids),
            "faiss IndexFlatL2.search k=1": lambda: quantizer.search(x, 1),
        }, args.repeats)
        labels = kernels.assign(x, centroids, device="cpu")[0]
        agree = {"kernels.assign": f"{np.mean(labels == quantizer.search(x, 1)[1][:, 0]):.4f}",
                 "numpy (expanded l2, argmin)": f"{np.mean(numpy_assign(x, centroids) == labels):.4f}",
                 "faiss IndexFlatL2.search k=1": "1"}
        sections.append(table(f"IVF assignment: {n:,} vectors to {NLIST} centroids", medians,
                              ("faiss IndexFlatL2.search k=1", "numpy (expanded l2, argmin)"), agree,
                              "same label as faiss / kernels"))

    if "kmeans" in ops:
        results: dict[str, np.ndarray] = {}

        def run_faiss() -> None:
            km = faiss.Kmeans(dim, NLIST, niter=KMEANS_ITERS, seed=SEED, max_points_per_centroid=n,
                              min_points_per_centroid=1)
            km.train(x, init_centroids=initial)
            results["faiss.Kmeans"] = km.centroids

        def run_kernels() -> None:
            results["kernels.kmeans"] = kernels.kmeans(x, NLIST, iters=KMEANS_ITERS, seed=SEED, tol=0, device="cpu")

        def run_numpy() -> None:
            results["numpy Lloyd"] = numpy_kmeans(x, initial, KMEANS_ITERS)

        medians = timed({"kernels.kmeans": run_kernels, "numpy Lloyd": run_numpy, "faiss.Kmeans": run_faiss},
                        max(3, args.repeats // 2), warm_up=False)
        start = objective(x, initial)
        objectives = {name: f"{objective(x, c):.1f} ({objective(x, c) / start:.3f} of start)"
                      for name, c in results.items()}
        sections.append(table(f"k-means: {NLIST} centroids of {n:,} vectors, {KMEANS_ITERS} iterations", medians,
                              ("faiss.Kmeans", "numpy Lloyd"), objectives, "objective (sum of squared l2)"))

    if "pq" in ops:
        pq_index = faiss.IndexPQ(dim, PQ_M, 8)
        pq_index.train(x[np.random.default_rng(SEED).choice(n, 256 * 64, replace=False)])
        pq_index.add(x)
        codebooks = faiss.vector_to_array(pq_index.pq.centroids).reshape(PQ_M, 256, dim // PQ_M)
        codes = faiss.vector_to_array(pq_index.codes).reshape(n, PQ_M)
        pq_ids = ids

        def run_kernels_pq() -> tuple[np.ndarray, np.ndarray]:
            return kernels.topk(kernels.pq_distances(q, codes, codebooks, "l2", device="cpu"), pq_ids, K)

        medians = timed({
            "kernels.pq_distances + topk": run_kernels_pq,
            "numpy (lookup tables, argpartition)": lambda: numpy_pq_topk(q, codes, codebooks, K),
            "faiss IndexPQ.search": lambda: pq_index.search(q, K),
        }, max(3, args.repeats // 2), warm_up=False)
        ours = run_kernels_pq()[0].astype(np.int64)
        agree = {"kernels.pq_distances + topk": f"{overlap(ours, pq_index.search(q, K)[1]):.4f}",
                 "numpy (lookup tables, argpartition)": f"{overlap(numpy_pq_topk(q, codes, codebooks, K), ours):.4f}",
                 "faiss IndexPQ.search": "1"}
        sections.append(table(f"PQ scan: {queries:,} queries x {n:,} codes (m={PQ_M}, 8 bits), top-{K}", medians,
                              ("faiss IndexPQ.search", "numpy (lookup tables, argpartition)"), agree,
                              "top-10 overlap with faiss / kernels"))

    if "backends" in ops:
        sections.append(bench_backends(x, q[:BACKEND_QUERIES], args.repeats, args.quick))
        kernels.set_thread_budget(args.threads)

    if build_section:
        sections.append(build_section)
    print("\n\n".join(sections))
    if args.only or args.quick:
        return
    markdown = f"""## Kernels: kernels vs numpy vs faiss (`bench/bench_kernels.py`)

{machine_line()}

Data set: `debian-minilm`, {n:,} x {dim} float32 unit vectors (cosine), the first {queries:,} dev queries.
Thread budget {args.threads} for every contender (`kernels.set_thread_budget`: numpy's BLAS and faiss's
OpenMP); faiss {faiss.__version__} ({faiss.SIMDConfig.get_level_name()}), numpy {np.__version__}. Median of
{args.repeats} interleaved runs ({max(3, args.repeats // 2)} for k-means and PQ); ratio = time / the baseline's
time (< 1: faster). Load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: the 2
cores are shared with other work, so absolute times vary from run to run more than the ratios do.
`kernels.search_block` (dot) is cosine on these unit vectors; its results are the deterministic
(distance, id) order, so the overlap with faiss is below 1 only where faiss breaks a tie at the kth place
differently. The k-means contenders start from the same {NLIST} rows; faiss.Kmeans samples no subset
(max_points_per_centroid = n). The per-op table runs every op both ways in one process at 1 thread and
times CPU, not wall, time; "backend used" is what `python -m kernels info` reports for the op. The build
section uses the thread budget of `--build-threads` for the appliance and faiss; pylance uses its own
thread pool (all cores).{(" " + build_note) if build_note else ""}

{chr(10).join(s + chr(10) for s in sections)}"""
    write_section("kernels", markdown)
    print("wrote the kernels section of docs/BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
