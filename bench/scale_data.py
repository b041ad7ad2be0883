"""The scale benchmark's data: seeded synthetic embeddings shaped like real ones, generated once, in chunks.

Recipe (`RECIPE`, the same on every machine for the same version): 384 dimensions; `CLUSTERS` clusters of
uneven size (Pareto(1.5) weights). Real sentence embeddings share a common direction and sit on thin,
elongated clusters, so:

    centre_k   = unit(g_k + 0.5 m)                  g_k ~ N(0, I/D), m a fixed unit vector (the shared direction)
    row        = unit(centre_k + U_k (s_k * z) + 0.3 e)
                 U_k: a random orthonormal D x RANK basis of cluster k (its own anisotropic subspace),
                 s_k[j] = spread_k / sqrt(j) normalised to length spread_k (a decaying spectrum),
                 spread_k ~ U(0.8, 1.4), z ~ N(0, I), e ~ N(0, I/D) (isotropic noise)

Rows are unit length (cosine = inner product). The spreads were chosen so the set is about as hard for IVF as
debian-minilm (60k rows, IVF245: recall@10 0.93 at nprobe 16, 0.96 at 24; mean cosine of two rows 0.09, of a
query's nearest neighbour 0.74), not trivially separable clusters. Chunk c of the base set is drawn from the
generator seeded with (SEED, c), so a smaller set is a prefix of a larger one and any chunk can be
regenerated alone; the held-out queries come from the same mixture with generator (SEED, QUERY_STREAM).
Exact ground truth: faiss IndexFlatIP over the base, one chunk at a time, the per-chunk top k merged.

Files, under the cache folder (`APPLIANCE_BENCH_CACHE` or ~/.cache/appliance-bench), written under a
temporary name and renamed when complete, reused by later runs:
`base-ROWS.npy` (float32), `rows-ROWS.parquet` (payload: column `row` = the row's position),
`queries-Q.npy`, `truth-ROWS-Q.npy` (int64 top-K row positions per query).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIM = 384
CLUSTERS = 2048
RANK = 24
SEED = 20_261_201
CHUNK = 131_072
QUERY_STREAM = 1_000_003
K = 10
SPREAD = (0.8, 1.4)  # length of a row's offset from its centre within the cluster's subspace
NOISE = 0.3  # length of its isotropic noise
VERSION = "v1"  # bump when the recipe changes, so old files are not reused
RECIPE = (f"{DIM} dims, {CLUSTERS} anisotropic clusters (Pareto(1.5) sizes; each a random rank-{RANK} subspace "
          f"with a 1/sqrt(j) spectrum and spread U{SPREAD}, plus isotropic noise {NOISE}), centres sharing a "
          f"common direction (weight 0.5), every row unit-normalised; seed {SEED}, chunks of {CHUNK:,} rows "
          f"(`bench/scale_data.py`)")


def cache_dir() -> Path:
    root = Path(os.environ.get("APPLIANCE_BENCH_CACHE") or Path.home() / ".cache" / "appliance-bench")
    path = root / f"scale-{VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Mixture:
    """The fixed part of the recipe: centres, weights, per-cluster bases and spectra (about 75 MB)."""

    def __init__(self) -> None:
        rng = np.random.default_rng([SEED, 0])
        shared = rng.standard_normal(DIM)
        shared /= np.linalg.norm(shared)
        centres = rng.standard_normal((CLUSTERS, DIM)) / np.sqrt(DIM) + 0.5 * shared
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        weights = rng.pareto(1.5, CLUSTERS) + 1.0
        self.weights = weights / weights.sum()
        spectrum = 1.0 / np.sqrt(np.arange(1, RANK + 1))
        spectrum /= np.linalg.norm(spectrum)
        spread = rng.uniform(*SPREAD, CLUSTERS)
        self.scaled_bases = np.empty((CLUSTERS, RANK, DIM), dtype=np.float32)  # rows: s_k[j] * U_k[:, j]
        for k in range(CLUSTERS):
            basis, _ = np.linalg.qr(rng.standard_normal((DIM, RANK)))
            self.scaled_bases[k] = (basis * (spread[k] * spectrum)).T

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        labels = rng.choice(CLUSTERS, size=n, p=self.weights)
        z = rng.standard_normal((n, RANK), dtype=np.float32)
        out = self.centres[labels] + NOISE / np.sqrt(DIM) * rng.standard_normal((n, DIM), dtype=np.float32)
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        bounds = np.searchsorted(sorted_labels, np.arange(CLUSTERS + 1))
        for k in np.unique(sorted_labels):
            idx = order[bounds[k]:bounds[k + 1]]
            out[idx] += z[idx] @ self.scaled_bases[k]
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def _atomic(path: Path, write) -> Path:
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)
    return path


def base(rows: int, mixture: Mixture | None = None, log=print) -> Path:
    """`base-ROWS.npy`, generated chunk by chunk into a memory-mapped file (at most one chunk in RAM)."""
    path = cache_dir() / f"base-{rows}.npy"
    if path.exists():
        return path
    mixture = mixture or Mixture()
    started = time.perf_counter()

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, DIM))
        for c, start in enumerate(range(0, rows, CHUNK)):
            n = min(CHUNK, rows - start)
            out[start:start + n] = mixture.draw(np.random.default_rng([SEED, 1 + c]), n)
        out.flush()
        del out

    # np.save's ".npy" suffix rule: open_memmap writes exactly the given name
    _atomic(path, write)
    log(f"generated {path} ({rows:,} x {DIM}) in {time.perf_counter() - started:.0f} s")
    return path


def payload(rows: int) -> Path:
    """`rows-ROWS.parquet`: the payload `row` (each row's position), row-aligned with base-ROWS.npy."""
    path = cache_dir() / f"rows-{rows}.parquet"
    if not path.exists():
        _atomic(path, lambda tmp: pq.write_table(pa.table({"row": np.arange(rows, dtype=np.int64)}), tmp))
    return path


def queries(n: int, mixture: Mixture | None = None) -> np.ndarray:
    path = cache_dir() / f"queries-{n}.npy"
    if not path.exists():
        mixture = mixture or Mixture()
        q = mixture.draw(np.random.default_rng([SEED, QUERY_STREAM]), n)
        _atomic(path, lambda tmp: np.save(open(tmp, "wb"), q))  # noqa: SIM115
    return np.load(path)


def truth(rows: int, q: np.ndarray, log=print) -> np.ndarray:
    """Exact top-K (inner product = cosine: unit rows) of each query: faiss IndexFlatIP per chunk, merged."""
    import faiss

    path = cache_dir() / f"truth-{rows}-{len(q)}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    data = np.load(base(rows), mmap_mode="r")
    best_d = np.full((len(q), K), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), K), -1, dtype=np.int64)
    for start in range(0, rows, CHUNK * 2):
        chunk = np.ascontiguousarray(data[start:start + CHUNK * 2])
        flat = faiss.IndexFlatIP(DIM)
        flat.add(chunk)
        d, i = flat.search(q, K)
        all_d, all_i = np.hstack([best_d, d]), np.hstack([best_i, i + start])
        top = np.argsort(-all_d, axis=1, kind="stable")[:, :K]
        best_d, best_i = np.take_along_axis(all_d, top, 1), np.take_along_axis(all_i, top, 1)
    _atomic(path, lambda tmp: np.save(open(tmp, "wb"), best_i))  # noqa: SIM115
    log(f"ground truth for {rows:,} rows, {len(q)} queries in {time.perf_counter() - started:.0f} s")
    return best_i
