"""Index parameters, with defaults chosen from the table's size."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

from appliance import limits
from appliance.errors import InvalidInput
from appliance.storage.schema import METRICS

CODECS = ("flat", "fp16", "sq8", "pq", "pq4", "hnsw_flat", "hnsw_sq")  # hnsw_*: a graph per partition (codec.py)
GRAPH_CODECS = ("hnsw_flat", "hnsw_sq")
# Rows per partition of a graph codec by default. Partitions cost a graph recall it cannot buy back with ef
# (debian-minilm, 62k rows, m 16, ef 64: 0.98 as one graph, 0.43 ms; 4 partitions need all 4 probed for 0.99,
# 1.4 ms; 248 partitions reach 0.96 only at nprobes 32, 4.4 ms, ~0.14 ms a partition): they spread a table over the
# executors and bound one graph's build memory, so they hold a quarter million rows each.
GRAPH_PARTITION_ROWS = 262_144
MAX_HNSW_M = 128  # neighbours per graph node: each costs 4 bytes per row (8 on the bottom layer)
DEFAULT_HNSW_M = 16  # debian-minilm, one graph, ef 40: recall@10 0.970 (m 32: 0.975, 7-23 % more memory)
# A graph's default search breadth is at least this, as the default probe count is at least nlist / 6: the
# build measures the ef that reaches the target on the table's own rows (tuning.py), but queries unlike the rows
# need a wider walk (test_indexer's clustered table queried from other clusters, 6,000 x 32, one graph: the rows
# reach 0.97 at ef 24, those queries 0.85 at ef 40 and 0.97 at 128; debian-minilm's held-out queries: 0.984 at
# 128, 0.36 ms of graph search vs 0.25 at the measured 48). docs/BENCHMARKS.md "default codec".
GRAPH_EF_FLOOR = 128


def default_ef(k: int) -> int:
    """A graph search's breadth when the client sends none: twice k, at least 40 (faiss's and LanceDB's
    default range), within MAX_EF. The planner puts it in graph tasks' `ef`; an executor's scan uses it for a
    task without one."""
    return min(max(2 * k, 40), limits.MAX_EF)

# The indexers' default codec ("auto", appliance/config.py `indexer_codec`): a graph up to the rows one graph
# partition holds, IVF flat above. Up to there hnsw_sq searches for about half the CPU of IVF flat at its probe
# floor, at higher recall (debian-minilm, 62k rows: 0.984 at ef 128, 3.3 ms of fleet CPU a query, vs 0.978 and
# 4.6), and builds in minutes at most (14 s of one core for 62k rows, 81 s for 200k; flat: 5 and 13 s). Above
# it a table is several graphs, each probed one walked, and builds grow to ~7 min of a core per million rows
# (flat: ~1), redone at every doubling. docs/BENCHMARKS.md "default codec".
AUTO_CODEC = "auto"
AUTO_CODECS = ("hnsw_sq", "flat")  # what the rule chooses from (a rebuild under it may switch between them)
GRAPH_TABLE_ROWS = GRAPH_PARTITION_ROWS


def default_codec(setting: str, rows: int) -> str:
    """The codec of an index the indexers build for a table of `rows` rows under their `setting` (a codec,
    or AUTO_CODEC: the size rule above)."""
    if setting != AUTO_CODEC:
        return setting
    graph, ivf = AUTO_CODECS
    return graph if rows <= GRAPH_TABLE_ROWS else ivf

# Each parameter's (low, high) when given (0 means "the default" where the field's comment says so).
BOUNDS = {
    "nlist": (0, limits.MAX_NLIST),
    "nprobes": (0, limits.MAX_NPROBES),
    "pq_m": (0, limits.MAX_PQ_M),
    "refine_factor": (0, limits.MAX_REFINE_FACTOR),
    "sample_rows": (0, limits.MAX_SAMPLE_ROWS),
    "kmeans_iters": (1, limits.MAX_KMEANS_ITERS),
    "seed": (0, 2**32 - 1),
    "batch_rows": (1, limits.MAX_BUILD_BATCH_ROWS),
    "hnsw_m": (0, MAX_HNSW_M),
    "ef": (0, limits.MAX_EF),
}


# The size rule's default probe count, nlist / 6, guards recall for queries unlike the table's rows (which the
# build's measurement cannot see); capped, so a large table's searches do not read a sixth of it each (1M x 384
# synthetic embeddings, nlist 1,000: 167 probes cost 4x the latency of the measured 4, which held recall 0.966;
# docs/BENCHMARKS.md "scale"). Past the cap, the recall monitor widens a table's searches if live queries
# need more (query/recall.py).
PROBE_FLOOR_CAP = 32

DEFAULT_TARGET_RECALL = 0.95
TARGET_RECALL_BOUNDS = (0.5, 1.0)


def check_target_recall(value: object, name: str = "target_recall") -> float:
    """A recall target as a client gives it: a number from 0.5 to 1.0."""
    low, high = TARGET_RECALL_BOUNDS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a number from {low} to {high}, got {value!r}")
    return float(value)


def check_metric(metric: object, name: str = "metric") -> str | None:
    """An index's metric as a client gives it: None (the table's) or one of METRICS."""
    if metric is None:
        return None
    if not isinstance(metric, str) or metric.lower() not in METRICS:
        raise InvalidInput(f"{name} must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric.lower()


@dataclass(frozen=True)
class IndexParams:
    codec: str = "flat"
    nlist: int = 0  # partitions; 0 = about sqrt(rows)
    nprobes: int = 0  # default probes per query; 0 = enough for recall@10 >= 0.95 on typical data
    pq_m: int = 0  # PQ sub-vectors; 0 = dimension / 8 (rounded to a divisor)
    refine_factor: int = 0  # default re-rank factor; 0 = 10 for PQ, none for the others
    sample_rows: int = 0  # training sample; 0 = min(rows, 256 x nlist)
    kmeans_iters: int = 20
    seed: int = 0
    batch_rows: int = 65_536  # rows read and assigned at a time, so memory stays bounded
    hnsw_m: int = 0  # graph codecs: neighbours per node (faiss HNSW M); 0 = DEFAULT_HNSW_M
    # graph codecs: default search breadth; 0 = what the build measures reaching target_recall (tuning.py), at
    # least GRAPH_EF_FLOOR; searches are raised to the measured ef
    ef: int = 0
    # recall@10 the build's probe count must reach (tuning.py); searches are raised to that probe count
    target_recall: float = DEFAULT_TARGET_RECALL

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> IndexParams:
        doc = dict(doc or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InvalidInput(f"unknown index parameter(s): {', '.join(unknown)}",
                               f"known: {', '.join(sorted(known))}")
        for name, value in doc.items():
            if name == "target_recall":
                doc[name] = check_target_recall(value)
                continue
            expected = str if name == "codec" else int
            if isinstance(value, bool) or not isinstance(value, expected):
                raise InvalidInput(f"index parameter {name} must be {expected.__name__}, got {value!r}")
            if expected is int:
                low, high = BOUNDS[name]
                limits.check_bound(f"index parameter {name}", value, high, low)
        params = cls(**doc)
        if params.codec not in CODECS:
            raise InvalidInput(f"codec must be one of {', '.join(CODECS)}, got {params.codec!r}")
        return params

    # The parameters chosen from a table's size or measured on it (0 = "choose for this table"): a rebuild
    # chooses them anew.
    SIZED = ("nlist", "nprobes", "sample_rows", "ef")

    @classmethod
    def for_rebuild(cls, built: dict[str, Any]) -> IndexParams:
        """The parameters a rebuild uses, from those an index was built with (its manifest's params): every
        choice kept (codec, graph size, recall target, PQ shape, seed...), the sizes chosen anew for the
        table's new size."""
        return cls(**{name: value for name, value in built.items()
                      if name in cls.__dataclass_fields__ and name not in cls.SIZED})

    def resolved(self, rows: int, dimension: int) -> IndexParams:
        """Fill every 0 with the default for a table of `rows` rows."""
        if self.codec in GRAPH_CODECS:  # few large partitions: a graph searches a partition in ~log(rows)
            nlist = self.nlist or max(1, math.ceil(rows / GRAPH_PARTITION_ROWS))
        else:
            nlist = self.nlist or max(1, min(4096, round(math.sqrt(max(rows, 1)))))
        nlist = max(1, min(nlist, max(rows, 1)))
        nprobes = self.nprobes or max(1, min(math.ceil(nlist / 6), PROBE_FLOOR_CAP))
        # pq4 (4-bit codes, faiss fast-scan) takes twice pq's sub-vectors: as many bytes a row, the same recall
        # after refine (debian-minilm, nprobes 32: recall@10 0.949 both, 0.19 vs 0.44 ms of scan a query)
        pq_m = self.pq_m or _divisor_near(dimension, max(1, dimension // (4 if self.codec == "pq4" else 8)))
        if dimension % pq_m:
            raise InvalidInput(f"pq_m={pq_m} must divide the dimension {dimension}")
        # PQ's coarse codes need re-ranking to reach flat's recall; SQ8 and FP16 keep each dimension to 8 or
        # 16 bits, which rarely changes a top 10 (debian-minilm, nprobes 32: recall@10 0.959 vs flat's 0.962)
        refine = self.refine_factor or (10 if self.codec in ("pq", "pq4") else 0)
        sample = self.sample_rows or min(max(rows, 1), 256 * nlist, limits.MAX_SAMPLE_ROWS)
        resolved = dataclasses.replace(self, nlist=nlist, nprobes=min(nprobes, nlist), pq_m=pq_m,
                                       refine_factor=refine, sample_rows=sample,
                                       hnsw_m=self.hnsw_m or DEFAULT_HNSW_M,
                                       ef=self.ef or (GRAPH_EF_FLOOR if self.codec in GRAPH_CODECS else 0))
        resolved.check()
        return resolved

    def check(self) -> None:
        """Every parameter within its bound (appliance/limits.py): an index from before the bounds, or one
        built by code that skipped from_json, cannot make a build or a search allocate without limit."""
        for name, (low, high) in BOUNDS.items():
            limits.check_bound(f"index parameter {name}", getattr(self, name), high, low)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _divisor_near(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))
