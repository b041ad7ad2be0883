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

Every figure is the median of REPEATS runs; the runs of one operation are interleaved (A, B, C, A, B, C,
...) so that load from other processes on the machine falls on every contender alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
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
SEED = 1


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


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=("topk", "assign", "kmeans", "pq"), help="run one operation, no report")
    args = parser.parse_args()
    kernels.set_thread_budget(args.threads)  # numpy BLAS and faiss OpenMP alike

    x = np.ascontiguousarray(np.load(DATA / "base.npy"), dtype=np.float32)
    q = np.ascontiguousarray(np.load(DATA / "dev_queries.npy")[:QUERIES], dtype=np.float32)
    ids = np.arange(len(x), dtype=np.uint64)
    n, dim = x.shape
    load_before = os.getloadavg()[0]
    sections: list[str] = []
    ops = [args.only] if args.only else ["topk", "assign", "kmeans", "pq"]

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
        sections.append(table(f"Exact top-{K}: {QUERIES:,} queries x {n:,} vectors", medians,
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
            results["kernels.kmeans"] = kernels.kmeans(x, NLIST, iters=KMEANS_ITERS, seed=SEED, device="cpu")

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
        sections.append(table(f"PQ scan: {QUERIES:,} queries x {n:,} codes (m={PQ_M}, 8 bits), top-{K}", medians,
                              ("faiss IndexPQ.search", "numpy (lookup tables, argpartition)"), agree,
                              "top-10 overlap with faiss / kernels"))

    print("\n\n".join(sections))
    if args.only:
        return
    markdown = f"""## Kernels: kernels vs numpy vs faiss (`bench/bench_kernels.py`)

{machine_line()}

Data set: `debian-minilm`, {n:,} x {dim} float32 unit vectors (cosine), the first {QUERIES:,} dev queries.
Thread budget {args.threads} for every contender (`kernels.set_thread_budget`: numpy's BLAS and faiss's
OpenMP); faiss {faiss.__version__} ({faiss.SIMDConfig.get_level_name()}), numpy {np.__version__}. Median of
{args.repeats} interleaved runs ({max(3, args.repeats // 2)} for k-means and PQ); ratio = time / the baseline's
time (< 1: faster). Load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: the 2
cores are shared with other work, so absolute times vary from run to run more than the ratios do.
`kernels.search_block` (dot) is cosine on these unit vectors; its results are the deterministic
(distance, id) order, so the overlap with faiss is below 1 only where faiss breaks a tie at the kth place
differently. The k-means contenders start from the same {NLIST} rows; faiss.Kmeans samples no subset
(max_points_per_centroid = n).

{chr(10).join(s + chr(10) for s in sections)}"""
    write_section("kernels", markdown)
    print("wrote the kernels section of docs/BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
