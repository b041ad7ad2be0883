"""A seeded synthetic clustered vector set (the 1M x 128 build benchmark's data).

`python bench/synthetic.py OUT.npy [ROWS] [DIM]` writes it; `clustered(rows, dim)` returns it in memory.
Rows are drawn around `clusters` Gaussian centres (uneven cluster sizes, per-cluster spread), so an IVF
index has structure to find, unlike uniform noise. The same arguments give the same array on every machine.
"""

from __future__ import annotations

import sys

import numpy as np


def clustered(rows: int, dim: int = 128, clusters: int = 1024, seed: int = 0, batch: int = 131_072) -> np.ndarray:
    """`rows` x `dim` float32 vectors around `clusters` centres, generated batch by batch (seeded)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (clusters, dim)).astype(np.float32)
    weights = rng.pareto(1.5, clusters) + 1.0
    weights /= weights.sum()
    spread = rng.uniform(0.15, 0.45, clusters).astype(np.float32)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        label = rng.choice(clusters, size=n, p=weights)
        noise = rng.standard_normal((n, dim), dtype=np.float32)
        out[start:start + n] = centres[label] + noise * spread[label, None]
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rows = int(argv[1]) if len(argv) > 1 else 1_000_000
    dim = int(argv[2]) if len(argv) > 2 else 128
    np.save(argv[0], clustered(rows, dim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
