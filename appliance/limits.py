"""Every fixed bound on what one request may ask of the fleet, declared once.

Each bound is checked at the edge (the native API's bodies, the LanceDB front), again where the work
happens (an index build, the executors), and answered with a 400 `limit_exceeded` naming the bound
(`LimitExceeded`), so no single request can make a process allocate without limit. Bounds a deployment may
reasonably want to change are settings instead (appliance/config.py): `max_k` (largest k),
`max_query_vectors` (query vectors per request), `max_batch_rows` (rows per insert), `max_body_bytes`.

The numbers keep the largest legitimate requests the appliance serves (k 10,000 on a million rows, PQ's
default re-rank of 10, 1,000 query vectors) well inside, and a request at every bound at once within
about a gigabyte of memory on an executor.
"""

from __future__ import annotations

from appliance.errors import InvalidInput, LimitExceeded

# --- search ------------------------------------------------------------------------------------------
MAX_REFINE_FACTOR = 100
"""refine_factor: the top k x refine_factor candidates of an IVF search are re-ranked exactly."""

MAX_CANDIDATES = 100_000
"""k x refine_factor: candidates one query vector may ask each executor for (before the post-filter's
widening, which the planner bounds by a factor of 20)."""

MAX_REQUEST_CANDIDATES = 10_000_000
"""query vectors x k x refine_factor: candidates one request may ask for in all (ids and distances of
10M candidates are 120 MB)."""

MAX_NPROBES = 65_536
"""nprobes: IVF partitions a query probes (clamped to the index's nlist anyway)."""

MAX_EF = 4_096
"""ef: the search breadth of a graph index (HNSW); none is served yet, the bound is reserved for it."""

MAX_OFFSET = 1_000_000
"""offset of a LanceDB query (rows skipped before k are returned)."""

# --- index builds ------------------------------------------------------------------------------------
MAX_NLIST = 65_536
"""nlist: IVF partitions of an index (the default is about sqrt(rows), at most 4,096)."""

MAX_PQ_M = 4_096
"""pq_m: PQ sub-vectors (must also divide the dimension)."""

MAX_KMEANS_ITERS = 1_000
"""kmeans_iters: k-means iterations of an index build."""

MAX_SAMPLE_ROWS = 4_194_304
"""sample_rows: training rows of an index build (4M rows of 1,024 float32 dimensions is 16 GiB, an
indexer host's worth)."""

MAX_BUILD_BATCH_ROWS = 1_048_576
"""batch_rows: rows an index build reads and assigns at a time."""

# --- request bodies ----------------------------------------------------------------------------------
MAX_JSON_DEPTH = 64
"""Nesting of arrays and objects in a JSON body (a search body is 3 deep, a row with list columns 5)."""

# --- filters and SQL expressions (appliance/storage/filters.py) ----------------------------------------
MAX_FILTER_CHARS = 4_096
"""Characters of one filter or SQL expression."""

MAX_FILTER_SIZE_ARG = 1_024
"""The size argument of a function that builds values (lpad/rpad's length, repeat's count...): what one
row's value may grow to, so a batch of 8,192 rows stays within about 8 MB per expression."""

MAX_FILTER_DEPTH = 64
"""Nesting of parentheses in one filter."""

MAX_FILTER_FANOUT = 32
"""Operands of `||`, concat(), concat_ws() and array/struct builders in one expression: how many copies of
a column one expression's value may hold."""

MAX_FILTER_GROWING = 2
"""Calls of functions that grow a value by a factor (replace/regexp_replace up to 4x, encode 2x) in one
expression, so nesting them cannot multiply a value without bound."""


def check_bound(name: str, value: int, limit: int, low: int = 0) -> int:
    """`value` when low <= value <= limit; else LimitExceeded naming the parameter and its bound (a value
    below `low` is plain bad input: no bound of cost was passed)."""
    if value > limit:
        raise LimitExceeded(f"{name} must be at most {limit}, got {value}", f"limit: {name} <= {limit}")
    if value < low:
        raise InvalidInput(f"{name} must be at least {low}, got {value}")
    return value


def check_candidates(k: int, refine_factor: int | None, queries: int = 1) -> None:
    """k x refine_factor per query vector and in all: what a search makes executors fetch and keep."""
    per_query = k * max(1, refine_factor or 0)
    if per_query > MAX_CANDIDATES:
        raise LimitExceeded(f"k x refine_factor must be at most {MAX_CANDIDATES}, got {k} x {refine_factor}",
                            f"limit: k x refine_factor <= {MAX_CANDIDATES} candidates per query vector")
    if per_query * queries > MAX_REQUEST_CANDIDATES:
        raise LimitExceeded(
            f"query vectors x k x refine_factor must be at most {MAX_REQUEST_CANDIDATES}, got "
            f"{queries} x {k} x {max(1, refine_factor or 0)}",
            f"limit: candidates per request <= {MAX_REQUEST_CANDIDATES}")
