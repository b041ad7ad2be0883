"""Fuzzing the query node's public API with hypothesis: over 2,000 generated requests across the operations
of /openapi.json (the LanceDB protocol and the native API; not drain/undrain, which take the node out of
service on purpose), with bodies that are well-formed, hostile or junk: JSON of the right shape with wrong
values, random JSON, filters that fail only on the data, random Arrow IPC streams, random bytes, wrong keys,
and resource bombs (filters that would build gigabyte strings, absurd k / refine_factor / nprobes / nlist,
JSON nested 100,000 deep, Arrow streams that claim huge buffers).
No request may get a 5xx. The cost is checked too, not only the answers: while the fuzz runs, a bystander
client searches another table and every answer must be right, and the memory of every process of the fleet
is sampled and must stay under a bound. Afterwards every node must be alive and never restarted, every
executor still routed to, and the fuzzed table still answering. Examples are derandomized, so a failure
reproduces."""

from __future__ import annotations

import json
import math
import string
import threading
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
import requests
from conftest import Api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proc_support import rss_bytes, tree

from appliance.storage.schema import vector_type

DIM = 4
SENT = {"requests": 0, "ok": 0}
ANONYMOUS = requests.Session()  # keep-alive, no key
FUZZ = settings(max_examples=350, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# table names: the fuzzed table, a missing one, and hostile ones; destructive operations never get "fz"
NAMES = st.sampled_from(["fz", "fz", "fz", "missing", "a$b", "..", "x" * 300, "%00", "fz;drop", "ünï"])
SAFE_NAMES = st.sampled_from(["victim", "victim", "victim", "missing", "a$b", "x" * 300])
FILTERS = st.one_of(
    st.sampled_from(["n > 3", "label = 'a'", "n IN (1, 2, 3)", "_rowid IN (0, 1)", "_rowoffset IN (0)", "nope > 1",
                     "n >", "'", "n > 1 AND label LIKE 'a%'", "vector IS NULL", "1 = 1", "n / 0 > 1", "label > 3",
                     "regexp_match(label, '(')", "n = 99999999999999999999999", ""]),
    st.text(max_size=40),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
VECTORS = st.one_of(
    st.lists(st.floats(-10, 10, width=32), min_size=DIM, max_size=DIM),
    st.lists(FLOATS, min_size=0, max_size=6),
    st.lists(st.lists(st.floats(-10, 10, width=32), min_size=DIM, max_size=DIM), min_size=1, max_size=3),
    st.just([]),
    st.text(max_size=5),
)
INTS = st.one_of(st.integers(-5, 20), st.integers(-(2**70), 2**70), st.just(9223372036854775807))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)
COLUMNS = st.one_of(st.lists(st.sampled_from(["n", "label", "vector", "_rowid", "nope", "_distance"]), max_size=4),
                    st.dictionaries(st.sampled_from(["a", "b", "n"]), FILTERS, max_size=2), JSON)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the plausible value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, JSON)


LANCE_QUERY = st.fixed_dictionaries({}, optional={
    "vector": maybe(VECTORS), "k": maybe(INTS), "offset": maybe(INTS), "filter": maybe(FILTERS),
    "prefilter": maybe(st.booleans()), "columns": COLUMNS, "with_row_id": maybe(st.booleans()),
    "nprobes": maybe(INTS), "minimum_nprobes": maybe(INTS), "refine_factor": maybe(st.none() | INTS),
    "distance_type": maybe(st.sampled_from(["l2", "cosine", "dot", "hamming", "L2"])),
    "bypass_vector_index": maybe(st.booleans()), "lower_bound": maybe(FLOATS), "upper_bound": maybe(FLOATS),
    "version": maybe(st.none() | INTS), "vector_column": maybe(st.sampled_from(["vector", "other"])),
    "full_text_query": maybe(st.fixed_dictionaries({"query": st.text(max_size=10)},
                                                   optional={"columns": st.lists(st.text(max_size=6), max_size=2)})),
    "order_by": maybe(st.lists(st.fixed_dictionaries({"column_name": st.sampled_from(["n", "label", "nope"]),
                                                      "ascending": st.booleans()}), max_size=2)),
})
# well-formed bodies, so half the fuzzing reaches the operations themselves rather than the validation
GOOD_VECTOR = st.lists(st.floats(-10, 10, width=32), min_size=DIM, max_size=DIM)
GOOD_FILTERS = st.sampled_from(["n > 3", "label = 'l1'", "n IN (1, 2, 3)", "_rowid IN (0, 1)", "1 = 1",
                                "n > 1 AND label LIKE 'l%'", "label IS NOT NULL"])
RUNTIME_BAD_FILTERS = st.sampled_from(["regexp_match(label, '(')", "n / 0 > 1", "cast(label as int) > 1",
                                       "n / (n - n) = 1"])  # type-check, then fail on the data
GOOD_LANCE_QUERY = st.fixed_dictionaries({"vector": st.one_of(GOOD_VECTOR, GOOD_VECTOR, st.just([])),
                                          "k": st.integers(1, 60)}, optional={
    "offset": st.integers(0, 5), "filter": GOOD_FILTERS, "prefilter": st.booleans(),
    "columns": st.lists(st.sampled_from(["n", "label", "vector"]), unique=True, max_size=3),
    "with_row_id": st.booleans(), "nprobes": st.integers(1, 30), "refine_factor": st.none() | st.integers(0, 5),
    "distance_type": st.sampled_from(["l2", "cosine", "dot"]), "bypass_vector_index": st.booleans(),
    "version": st.none() | st.integers(1, 3), "lower_bound": st.floats(0, 1), "upper_bound": st.floats(1, 100),
})
GOOD_NATIVE_SEARCH = st.fixed_dictionaries({"vector": GOOD_VECTOR, "k": st.integers(1, 50)}, optional={
    "filter": GOOD_FILTERS, "columns": st.lists(st.sampled_from(["n", "label"]), unique=True),
    "metric": st.sampled_from(["l2", "cosine", "dot"]), "prefilter": st.booleans(),
    "bypass_vector_index": st.booleans(), "nprobes": st.integers(1, 10), "refine_factor": st.integers(0, 3),
})
NATIVE_SEARCH = st.fixed_dictionaries({}, optional={
    "vector": maybe(VECTORS), "vectors": maybe(st.lists(VECTORS, max_size=3)), "k": maybe(INTS),
    "metric": maybe(st.sampled_from(["l2", "cosine", "dot", "x"])), "filter": maybe(FILTERS), "columns": COLUMNS,
    "nprobes": maybe(INTS), "refine_factor": maybe(INTS), "prefilter": maybe(st.booleans()),
    "bypass_vector_index": maybe(st.booleans()), "explain": maybe(st.booleans()),
})

# (method, path template, body strategy); {t} is a table name
JSON_OPS = [
    ("POST", "/v1/table/{t}/query/", LANCE_QUERY),
    ("POST", "/v1/table/{t}/query/", GOOD_LANCE_QUERY),
    ("POST", "/v1/table/{t}/query/", GOOD_LANCE_QUERY),
    ("POST", "/v1/table/{t}/explain_plan/", st.fixed_dictionaries({"query": LANCE_QUERY | GOOD_LANCE_QUERY},
                                                                  optional={"verbose": JSON})),
    ("POST", "/v1/table/{t}/count_rows/", st.fixed_dictionaries({}, optional={"predicate": maybe(FILTERS),
                                                                              "version": maybe(INTS)})),
    ("POST", "/v1/table/{t}/count_rows/", st.fixed_dictionaries({}, optional={"predicate": GOOD_FILTERS})),
    ("POST", "/v1/table/{t}/describe/", st.fixed_dictionaries({}, optional={"version": maybe(INTS)})),
    ("POST", "/v1/table/{t}/update/", st.fixed_dictionaries({}, optional={
        "predicate": maybe(FILTERS), "updates": maybe(st.lists(st.tuples(
            st.sampled_from(["label", "n", "vector", "nope"]), FILTERS).map(list), max_size=2))})),
    ("POST", "/v1/table/{t}/create_index/", st.fixed_dictionaries({}, optional={
        "column": maybe(st.sampled_from(["label", "n", "nope", "vector"])),
        "index_type": maybe(st.sampled_from(["BTREE", "BITMAP", "LABEL_LIST", "FTS", "IVF_HNSW_SQ", "WHAT"])),
        "replace": maybe(st.booleans()), "name": maybe(st.text(max_size=8))})),
    ("POST", "/v1/table/{t}/index/list/", st.fixed_dictionaries({}, optional={"version": maybe(INTS)})),
    ("POST", "/v1/table/{t}/index/{i}/stats/", st.fixed_dictionaries({}, optional={"version": maybe(INTS)})),
    ("POST", "/v1/table/{t}/version/list/", st.just({})),
    ("POST", "/v1/table/{t}/stats/", st.just({})),
    ("GET", "/v1/table/", st.just(None)),
    ("GET", "/v1/namespace/{t}/table/list", st.just(None)),
    ("POST", "/api/v1/tables/{t}/search", NATIVE_SEARCH),
    ("POST", "/api/v1/tables/{t}/search", GOOD_NATIVE_SEARCH),
    ("POST", "/v1/table/{t}/query/", st.fixed_dictionaries({"vector": GOOD_VECTOR | st.just([]),
                                                           "k": st.integers(1, 10), "filter": RUNTIME_BAD_FILTERS})),
    ("POST", "/api/v1/tables/{t}/search", st.fixed_dictionaries({"vector": GOOD_VECTOR,
                                                                 "filter": RUNTIME_BAD_FILTERS})),
    ("POST", "/v1/table/{t}/count_rows/", st.fixed_dictionaries({"predicate": RUNTIME_BAD_FILTERS})),
    ("POST", "/v1/table/{t}/update/", st.fixed_dictionaries({"predicate": GOOD_FILTERS, "updates": st.sampled_from(
        [[["label", "'x'"]], [["n", "n + 1"]], [["label", "concat(label, 'y')"]]])})),
    ("POST", "/api/v1/tables/{t}/explain", NATIVE_SEARCH),
    ("POST", "/api/v1/tables/{t}/rows", st.fixed_dictionaries({}, optional={"rows": maybe(st.lists(
        st.fixed_dictionaries({}, optional={"vector": maybe(VECTORS), "n": maybe(INTS), "label": JSON}),
        max_size=3))})),
    ("GET", "/api/v1/tables/{t}", st.just(None)),
    ("GET", "/api/v1/tables/{t}/index", st.just(None)),
    ("POST", "/api/v1/tables", st.fixed_dictionaries({}, optional={
        "name": maybe(SAFE_NAMES), "dimension": maybe(INTS), "metric": maybe(st.sampled_from(["l2", "x"])),
        "schema": maybe(st.dictionaries(st.text(max_size=6), st.sampled_from(["string", "int64", "blob"]),
                                        max_size=3))})),
]
DESTRUCTIVE_OPS = [  # only ever on tables the checks do not rely on
    ("POST", "/v1/table/{t}/delete/", st.fixed_dictionaries({}, optional={"predicate": maybe(FILTERS)})),
    ("POST", "/v1/table/{t}/restore/", st.fixed_dictionaries({}, optional={"version": maybe(INTS)})),
    ("POST", "/v1/table/{t}/drop/", st.just({})),
    ("POST", "/v1/table/{t}/index/{i}/drop/", st.just({})),
    ("POST", "/api/v1/tables/{t}/delete", st.fixed_dictionaries({}, optional={"filter": maybe(FILTERS)})),
    ("DELETE", "/api/v1/tables/{t}", st.just(None)),
    ("POST", "/v1/table/{t}/add_columns/", st.fixed_dictionaries({}, optional={"new_columns": maybe(st.lists(
        st.fixed_dictionaries({"name": maybe(st.sampled_from(["c", "n", "vector", "_rowid", ""])),
                               "expression": maybe(FILTERS)}), max_size=2))})),
    ("POST", "/v1/table/{t}/alter_columns/", st.fixed_dictionaries({}, optional={"alterations": maybe(st.lists(
        st.fixed_dictionaries({"path": maybe(st.sampled_from(["n", "label", "vector", "nope"]))}, optional={
            "rename": maybe(st.sampled_from(["m", "n", "vector"])), "nullable": maybe(st.booleans()),
            "data_type": maybe(st.fixed_dictionaries({"type": st.sampled_from(["int32", "string", "nope"])}))}),
        max_size=2))})),
    ("POST", "/v1/table/{t}/drop_columns/", st.fixed_dictionaries({}, optional={"columns": maybe(st.lists(
        st.sampled_from(["n", "label", "vector", "nope"]), max_size=2))})),
]
ARROW_OPS = [
    ("/v1/table/{t}/insert/", ["", "?mode=overwrite", "?mode=bogus", "?upload_id=x"]),
    ("/v1/table/{t}/create/", ["?mode=create", "?mode=exist_ok", "?mode=overwrite", "?mode=nope"]),
    ("/v1/table/{t}/merge_insert/", ["?on=n&when_matched_update_all=true&when_not_matched_insert_all=true",
                                     "?on=nope&when_not_matched_insert_all=true", "?on=",
                                     "?on=n&when_not_matched_by_source_delete=true"
                                     "&when_not_matched_by_source_delete_filt=n%20%3E%20",
                                     "?on=n&when_matched_update_all=maybe",
                                     "?on=n&when_not_matched_by_source_delete=true"
                                     "&when_not_matched_by_source_delete_filt=n%20%3E%2055"]),
    ("/api/v1/tables/{t}/rows", [""]),
]


def _column(kind: str, rows: int, data: st.DataObject) -> pa.Array:
    if kind == "fixed":
        dim = data.draw(st.sampled_from([DIM, DIM, 1, 3]))
        values = data.draw(st.lists(st.floats(-5, 5, width=32) | FLOATS, min_size=rows * dim, max_size=rows * dim))
        return pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), dim)
    if kind == "list":
        return pa.array(data.draw(st.lists(st.lists(st.floats(-5, 5), max_size=5), min_size=rows, max_size=rows)))
    if kind == "int":
        return pa.array(data.draw(st.lists(st.integers(-100, 100) | st.none(), min_size=rows, max_size=rows)),
                        pa.int64())
    if kind == "string":
        return pa.array(data.draw(st.lists(st.text(max_size=5) | st.none(), min_size=rows, max_size=rows)))
    return pa.array(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))


def arrow_body(data: st.DataObject) -> bytes:
    rows = data.draw(st.integers(0, 4))
    if data.draw(st.booleans()):  # rows of the tables' own schema
        vectors = data.draw(st.lists(st.floats(-5, 5, width=32), min_size=rows * DIM, max_size=rows * DIM))
        columns = {"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), DIM),
                   "n": pa.array(data.draw(st.lists(st.integers(0, 60), min_size=rows, max_size=rows)), pa.int64()),
                   "label": pa.array(data.draw(st.lists(st.sampled_from(["l1", "l2", "z"]), min_size=rows,
                                                        max_size=rows)))}
        return _stream(pa.table(columns), rows, data)
    names = data.draw(st.lists(st.sampled_from(["vector", "n", "label", "extra", "_rowid"]), min_size=1, max_size=4,
                               unique=True))
    columns = {name: _column(data.draw(st.sampled_from(["fixed", "list", "int", "string", "bool"])), rows, data)
               for name in names}
    return _stream(pa.table(columns), rows, data)


def _stream(table: pa.Table, rows: int, data: st.DataObject) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        if rows:
            writer.write_table(table)
    raw = sink.getvalue().to_pybytes()
    cut = data.draw(st.sampled_from([None, None, None, 0.5]))  # sometimes a truncated stream
    return raw if cut is None else raw[: int(len(raw) * cut)]


# resource bombs: each would cost gigabytes or minutes if it ran; each must be a quick 4xx instead
_COL = st.sampled_from(["label", "cast(n as string)", "concat(label, label)"])
_HUGE = st.sampled_from([50_000_000, 2_000_000_000, 2**31 - 1, 10**12])
BOMB_FILTERS = st.one_of(
    st.builds(lambda c, n: f"lpad({c}, {n}, 'x') = 'a'", _COL, _HUGE),
    st.builds(lambda c, n: f"rpad({c}, {n}) = 'a'", _COL, _HUGE),
    st.builds(lambda c, n: f"repeat({c}, {n}) = 'a'", _COL, _HUGE),
    st.builds(lambda c, n: f"length(repeat(repeat({c}, {n}), {n})) > 1", _COL, _HUGE),
    st.builds(lambda n: f"array_length(array_repeat(n, {n})) > 1", _HUGE),
    st.builds(lambda n: f"array_length(range(0, {n})) > 1", _HUGE),
    st.builds(lambda n: f"cardinality(generate_series(1, {n})) > 1", _HUGE),
    st.builds(lambda c, n: f"regexp_replace({c}, '', repeat('x', {n})) = 'a'", _COL, _HUGE),
    st.builds(lambda c, n: f"concat(lpad({c}, {n}), lpad({c}, {n})) = 'a'", _COL, _HUGE),
    st.builds(lambda c, n: f"to_hex({n}) = {c} OR lpad('', {n}) = {c}", _COL, _HUGE),
    st.builds(lambda d: "(" * d + "n > 1" + ")" * d, st.integers(100, 2000)),
    st.builds(lambda d: "NOT " * d + "n > 1", st.integers(100, 1000)),
    st.builds(lambda d: " AND ".join(["n > 1"] * d), st.integers(100, 680)),
    st.just("regexp_match(label, '(a*)*b') IS NOT NULL"),
    st.just("label LIKE '" + "%_" * 1000 + "'"),
)
_BIG = st.sampled_from([10**4, 10**5, 10**6, 10**9, 2**31, 2**63 - 1])
BOMB_SEARCH = st.fixed_dictionaries({"vector": GOOD_VECTOR}, optional={
    "k": _BIG | st.integers(1, 10_000), "refine_factor": _BIG | st.integers(0, 1000), "nprobes": _BIG,
    "filter": BOMB_FILTERS, "prefilter": st.booleans()})
BOMB_LANCE_QUERY = st.fixed_dictionaries({"vector": GOOD_VECTOR, "k": _BIG | st.integers(1, 10_000)}, optional={
    "refine_factor": _BIG | st.integers(0, 1000), "nprobes": _BIG, "minimum_nprobes": _BIG, "offset": _BIG,
    "filter": BOMB_FILTERS, "prefilter": st.booleans(), "ef": _BIG})
BOMB_INDEX = st.fixed_dictionaries({}, optional={
    "codec": st.sampled_from(["flat", "sq8", "pq", "fp16"]), "nlist": _BIG, "nprobes": _BIG, "pq_m": _BIG,
    "refine_factor": _BIG, "sample_rows": _BIG, "kmeans_iters": _BIG, "batch_rows": _BIG,
    "metric": st.sampled_from(["l2", "nope", "cosine"])})
BOMB_LANCE_INDEX = st.fixed_dictionaries({"column": st.just("vector")}, optional={
    "index_type": st.sampled_from(["IVF_FLAT", "IVF_PQ", "IVF_SQ", "IVF_HNSW_SQ"]), "num_partitions": _BIG,
    "num_sub_vectors": _BIG, "max_iterations": _BIG, "metric_type": st.sampled_from(["l2", "nope"]),
    "sample_rate": _BIG})
# (method, path template, body strategy): the bombs aimed at the fuzzed table (non-destructive ones)
BOMB_OPS = [
    ("POST", "/api/v1/tables/{t}/search", BOMB_SEARCH),
    ("POST", "/api/v1/tables/{t}/explain", BOMB_SEARCH),
    ("POST", "/v1/table/{t}/query/", BOMB_LANCE_QUERY),
    ("POST", "/v1/table/{t}/count_rows/", st.fixed_dictionaries({"predicate": BOMB_FILTERS})),
    ("POST", "/v1/table/{t}/update/", st.fixed_dictionaries({"predicate": GOOD_FILTERS | BOMB_FILTERS,
                                                              "updates": st.builds(lambda f: [["label", f]],
                                                                                   BOMB_FILTERS)})),
    ("POST", "/api/v1/tables/{t}/index", BOMB_INDEX),
    ("POST", "/v1/table/{t}/create_index/", BOMB_LANCE_INDEX),
]
# on the destructive operations' table
BOMB_DESTRUCTIVE_OPS = [
    ("POST", "/api/v1/tables/{t}/delete", st.fixed_dictionaries({"filter": BOMB_FILTERS})),
    ("POST", "/v1/table/{t}/delete/", st.fixed_dictionaries({"predicate": BOMB_FILTERS})),
    ("POST", "/v1/table/{t}/add_columns/", st.fixed_dictionaries({"new_columns": st.builds(
        lambda f: [{"name": "c", "expression": f}], BOMB_FILTERS)})),
]
NESTED_PATHS = ["/api/v1/tables/fz/search", "/v1/table/fz/query/", "/v1/table/victim/add_columns/",
                "/api/v1/tables/fz/rows", "/v1/table/fz/count_rows/", "/api/v1/tables/fz/index", "/api/v1/tables"]


def nested_json(data: st.DataObject) -> bytes:
    depth = data.draw(st.sampled_from([1_000, 10_000, 100_000]))
    shape = data.draw(st.sampled_from(["list", "object", "inside"]))
    if shape == "list":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"vector": [0, 0, 0, 0], "k": 1, "filter": ' + b"[" * depth + b"]" * depth + b"}"


def huge_claim_arrow(data: st.DataObject) -> bytes:
    """An Arrow IPC stream whose record batch claims far more rows or bytes than it carries."""
    sink = pa.BufferOutputStream()
    table = pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(DIM * 2, np.float32)), DIM),
                      "n": pa.array([1, 2], pa.int64()), "label": pa.array(["a", "b"])})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    raw = bytearray(sink.getvalue().to_pybytes())
    for _ in range(data.draw(st.integers(1, 8))):  # overwrite a few bytes of the batch's metadata with huge numbers
        at = data.draw(st.integers(len(raw) // 3, len(raw) - 8))
        raw[at:at + 8] = data.draw(st.sampled_from([b"\xff" * 8, (2**40).to_bytes(8, "little"),
                                                    (2**31 - 1).to_bytes(8, "little")]))
    return bytes(raw)


def make_table(api: Api, name: str) -> None:
    base = np.random.default_rng(5).normal(size=(50, DIM)).astype(np.float32)
    api.create(name, DIM, "l2", {"n": "int64", "label": "string"})
    api.insert_arrow(name, pa.table({"vector": pa.array(base.tolist(), vector_type(DIM)),
                                     "n": np.arange(50), "label": [f"l{i % 5}" for i in range(50)]}))


def ensure_victim(fleet) -> None:
    """The destructive operations' table, back in its first shape whenever one of them dropped it."""
    api = Api(fleet.url, fleet.api_key)
    if api.get("/api/v1/tables/victim").status_code == 404:
        make_table(api, "victim")


class Watch:
    """While the fuzz runs: a bystander searching its own table (every answer must be right), and the resident
    memory of every process of the fleet, sampled every 0.2 s (the most each one ever held)."""

    def __init__(self, fleet, api: Api) -> None:
        self.fleet, self.api = fleet, api
        self.failures: list[str] = []
        self.answered = 0
        self.baseline = self._rss()
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._search, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _rss(self) -> dict[str, int]:
        return {f"{node.name}/{pid}": rss_bytes(pid) for node in self.fleet.nodes for pid in tree(node.process.pid)}

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for name, rss in self._rss().items():
                self.peak[name] = max(self.peak.get(name, 0), rss)

    def _search(self) -> None:
        rng = np.random.default_rng(11)
        while not self._stop.wait(0.05):
            q = rng.normal(size=DIM)
            try:
                resp = self.api.http.post(f"{self.fleet.url}/api/v1/tables/bystander/search",
                                          json={"vector": q.tolist(), "k": 3, "columns": ["n"]}, timeout=30)
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
                continue
            if resp.status_code != 200:
                self.failures.append(f"{resp.status_code} {resp.text[:200]}")
            elif [r["n"] for r in resp.json()["results"]] != BYSTANDER.nearest(q, 3):
                self.failures.append("wrong answer")
            self.answered += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


class _Bystander:
    base = np.random.default_rng(7).normal(size=(300, DIM)).astype(np.float32)

    def nearest(self, q: np.ndarray, k: int) -> list[int]:
        d = ((self.base.astype(np.float64) - q) ** 2).sum(1)
        return sorted(range(len(d)), key=lambda i: (d[i], i))[:k]


BYSTANDER = _Bystander()
WATCH: list[Watch] = []
MEMORY_GROWTH_BOUND = 600 * 1024 * 1024  # no process may grow by more than this over the whole fuzz


@pytest.fixture(scope="module")
def http(fleet) -> Iterator[requests.Session]:
    api = Api(fleet.url, fleet.api_key)
    for name in ("fz", "victim"):
        make_table(api, name)
    api.create("bystander", DIM, "l2", {"n": "int64"})
    api.insert_arrow("bystander", pa.table({"vector": pa.array(BYSTANDER.base.tolist(), vector_type(DIM)),
                                            "n": np.arange(len(BYSTANDER.base))}))
    assert api.post("/api/v1/tables/bystander/index", {"nlist": 4, "nprobes": 4}).status_code == 201
    session = requests.Session()
    session.headers["x-api-key"] = fleet.api_key
    WATCH.append(Watch(fleet, api))
    yield session
    WATCH[0].stop()


def send(http: requests.Session, fleet, method: str, path: str, **kwargs: object) -> requests.Response:
    resp = http.request(method, fleet.url + path, timeout=60, **kwargs)
    SENT["requests"] += 1
    SENT["ok"] += resp.status_code < 300
    SENT[f"{method} {path.split('/')[-2] or path} {resp.status_code}"] = SENT.get(
        f"{method} {path.split('/')[-2] or path} {resp.status_code}", 0) + 1
    assert resp.status_code < 500, f"{method} {path} -> {resp.status_code}: {resp.text[:500]}"
    if resp.status_code >= 400:
        doc = resp.json()
        assert {"error", "code"} <= set(doc), resp.text
    return resp


def _path(template: str, table: str, index: str) -> str:
    return template.replace("{t}", requests.utils.quote(table, safe="$")).replace("{i}", index)


@FUZZ
@given(data=st.data())
def test_fuzz_json_operations(http, fleet, data) -> None:
    method, template, bodies = data.draw(st.sampled_from(JSON_OPS))
    table = data.draw(NAMES)
    index = data.draw(st.sampled_from(["vector_idx", "label_idx", "nope", "%2F"]))
    body = data.draw(bodies)
    kind = data.draw(st.sampled_from(["json", "json", "json", "raw", "none"]))
    if body is None or kind == "none":
        send(http, fleet, method, _path(template, table, index))
    elif kind == "raw":
        junk = data.draw(st.binary(max_size=64) | st.sampled_from([b"{", b"[]", b"null", b"1e999", b"\xff\xfe"]))
        send(http, fleet, method, _path(template, table, index), data=junk,
             headers={"content-type": data.draw(st.sampled_from(["application/json", "text/plain"]))})
    else:
        send(http, fleet, method, _path(template, table, index), data=json.dumps(body),
             headers={"content-type": "application/json"})


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_fuzz_destructive_operations(http, fleet, data) -> None:
    ensure_victim(fleet)
    method, template, bodies = data.draw(st.sampled_from(DESTRUCTIVE_OPS))
    body = data.draw(bodies)
    path = _path(template, data.draw(SAFE_NAMES), data.draw(st.sampled_from(["vector_idx", "nope"])))
    send(http, fleet, method, path, **({} if body is None else {"json": body}))


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_arrow_bodies(http, fleet, data) -> None:
    template, queries = data.draw(st.sampled_from(ARROW_OPS))
    destructive = "overwrite" in template or data.draw(st.booleans())
    table = data.draw(SAFE_NAMES if destructive else st.sampled_from(["fz", "missing", "a$b"]))
    path = _path(template, table, "") + data.draw(st.sampled_from(queries))
    if table == "fz" and ("overwrite" in path or "merge_insert" in path or "create" in path):
        table = "victim"
        path = _path(template, table, "") + path.rsplit("/", 1)[1]
    body = arrow_body(data) if data.draw(st.integers(0, 5)) else data.draw(st.binary(max_size=100))
    send(http, fleet, "POST", path, data=body, headers={"content-type": "application/vnd.apache.arrow.stream"})


@settings(FUZZ, max_examples=300)
@given(key=st.one_of(st.none(), st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1,
                                         max_size=40)),
       path=st.sampled_from(["/v1/table/", "/v1/table/fz/query/", "/api/v1/tables", "/admin/ring", "/metrics"]))
def test_fuzz_keys(fleet, key, path) -> None:
    headers = {} if key is None else {"x-api-key": key}
    resp = ANONYMOUS.get(fleet.url + path, headers=headers, timeout=30)
    SENT["requests"] += 1
    assert resp.status_code < 500
    if path != "/metrics":
        assert resp.status_code in (401, 405)  # never served without the right key


@settings(FUZZ, max_examples=1000)
@given(data=st.data())
def test_fuzz_resource_bombs(http, fleet, data) -> None:
    """Requests that would cost gigabytes or minutes if run as asked answer 4xx, each in well under 30 s."""
    kind = data.draw(st.sampled_from(["op", "op", "op", "op", "destructive", "nested", "arrow"]))
    started = time.monotonic()
    if kind == "op":
        method, template, bodies = data.draw(st.sampled_from(BOMB_OPS))
        resp = send(http, fleet, method, _path(template, "fz", ""), data=json.dumps(data.draw(bodies)),
                    headers={"content-type": "application/json"})
    elif kind == "destructive":
        ensure_victim(fleet)
        method, template, bodies = data.draw(st.sampled_from(BOMB_DESTRUCTIVE_OPS))
        resp = send(http, fleet, method, _path(template, "victim", ""), json=data.draw(bodies))
    elif kind == "nested":
        resp = send(http, fleet, "POST", data.draw(st.sampled_from(NESTED_PATHS)), data=nested_json(data),
                    headers={"content-type": "application/json"})
    else:
        path = data.draw(st.sampled_from(["/api/v1/tables/victim/rows", "/v1/table/victim/insert/",
                                          "/v1/table/victim/merge_insert/?on=n&when_not_matched_insert_all=true"]))
        resp = send(http, fleet, "POST", path, data=huge_claim_arrow(data),
                    headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert time.monotonic() - started < 30, f"{resp.request.method} {resp.request.url} took too long"


def test_nodes_healthy_and_correct_after_fuzzing(http, fleet) -> None:
    assert SENT["requests"] >= 2000, SENT
    assert SENT["ok"] >= 80, SENT  # the fuzz reaches the operations, not only the validation in front
    assert all(node.alive and node.restarts == 0 for node in fleet.nodes)
    for node in fleet.nodes:
        assert requests.get(node.url + "/healthz", timeout=10).status_code == 200
    assert requests.get(fleet.url + "/readyz", timeout=10).status_code == 200
    ring = requests.get(fleet.url + "/admin/ring", headers={"x-api-key": fleet.api_key}, timeout=10).json()
    assert len(ring["live"]) == 2
    resp = http.post(fleet.url + "/api/v1/tables/fz/search", json={"vector": [0, 0, 0, 0], "k": 3, "columns": ["n"]})
    assert resp.status_code == 200 and len(resp.json()["results"]) == 3
    assert all(math.isfinite(r["_distance"]) for r in resp.json()["results"])
    watch = WATCH[0]
    watch.stop()
    assert watch.answered >= 50 and not watch.failures, (watch.answered, watch.failures[:5])
    grown = {name: watch.peak[name] - watch.baseline.get(name, 0) for name in watch.peak}
    assert max(grown.values()) < MEMORY_GROWTH_BOUND, {n: g >> 20 for n, g in grown.items()}
