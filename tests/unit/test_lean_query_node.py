"""The query node's hot path in pieces: orjson answers, binary query vectors, the log thread, the state a
node's workers share, and the table version cache of searches."""

from __future__ import annotations

import datetime
import multiprocessing
import subprocess
import sys
import time

import lance
import numpy as np
import pyarrow as pa
import pytest
from werkzeug.datastructures import Headers, MultiDict

from appliance.errors import InvalidInput, LimitExceeded
from appliance.node_state import NodeState
from appliance.query.request import OCTET_STREAM, parse_binary_search
from appliance.storage import StorageRoot, TableStore
from appliance.web import json_bytes


def test_json_answers_keep_the_stdlib_meaning_and_end_with_a_newline() -> None:
    body = {"a": float("nan"), "b": float("inf"), 1: "x", "t": datetime.datetime(2024, 1, 2, 3, 4, 5),
            "raw": b"ab", "f": np.float32(1.5), "nested": [{"k": None}]}
    assert json_bytes(body) == (b'{"a":null,"b":null,"1":"x","t":"2024-01-02 03:04:05","raw":"b\'ab\'",'
                                b'"f":"1.5","nested":[{"k":null}]}\n')
    assert json_bytes({"big": 2**70}) == b'{"big": 1180591620717411303424}\n'  # beyond orjson: the stdlib


def _binary(raw: bytes, dimension: str | None = "4", **params: str) -> tuple[np.ndarray, dict]:
    headers = Headers({"x-vector-dimension": dimension} if dimension is not None else {})
    return parse_binary_search(OCTET_STREAM, raw, headers, MultiDict(params), max_queries=3)


def test_float32_bodies() -> None:
    q = np.arange(8, dtype="<f4")
    queries, doc = _binary(q.tobytes(), k="7", columns="a, b", prefilter="false", filter="n > 1")
    assert queries.shape == (2, 4) and queries.flags.writeable and (queries.ravel() == q).all()
    assert doc == {"k": 7, "columns": ["a", "b"], "prefilter": False, "filter": "n > 1"}
    with pytest.raises(InvalidInput, match="not a whole number of 4-dimension"):
        _binary(q.tobytes()[:-1])
    with pytest.raises(LimitExceeded, match="at most 3 query vectors"):
        _binary(np.zeros(16, "<f4").tobytes())
    with pytest.raises(InvalidInput, match="needs the x-vector-dimension header"):
        _binary(q.tobytes(), None)
    with pytest.raises(InvalidInput, match="given 2 times"):
        parse_binary_search(OCTET_STREAM, q.tobytes(), Headers({"x-vector-dimension": "4"}),
                            MultiDict([("k", "1"), ("k", "2")]), 3)


def test_logging_leaves_the_request_thread_and_flushes_at_exit() -> None:
    code = ("import logging, threading\n"
            "from appliance.web import configure_logging\n"
            "configure_logging('info')\n"
            "caller = threading.current_thread().name\n"
            "class Where(logging.Filter):\n"
            "    def filter(self, record):\n"
            "        record.msg = f'{record.msg} written by {threading.current_thread().name != caller}'\n"
            "        return True\n"
            "import appliance.web\n"
            "appliance.web._listener.handlers[0].addFilter(Where())\n"
            "for i in range(3):\n"
            "    logging.getLogger('appliance.http').info('line %d', i)\n"
            "for i in range(500):\n"
            "    appliance.web._access_log.put({'request_id': i})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stderr.splitlines()
    assert lines[:3] == [f"line {i} written by True" for i in range(3)]  # every line, none by the caller
    assert lines[3:] == [f'{{"request_id":{i}}} written by True' for i in range(500)]  # access lines: all, in order


def _other_worker(node: NodeState, done: multiprocessing.synchronize.Event) -> None:
    with node.locked():
        node.add_in_flight(1)
        node.set_draining(True)
    node.table_written("t")
    done.wait(30)


def test_the_workers_of_a_node_share_drain_and_write_counters() -> None:
    node = NodeState(shared=True, workers=2)  # as the gunicorn master makes it (create_shared) before it forks
    before = node.table_counter("t")
    done = multiprocessing.get_context("fork").Event()
    worker = multiprocessing.get_context("fork").Process(target=_other_worker, args=(node, done))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while node.in_flight() != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert node.draining()[0] and node.table_counter("t") == before + 1
    finally:
        done.set()
        worker.join(30)
    assert node.in_flight() == 0  # a worker that is gone is not waited for


@pytest.fixture
def store_pair(tmp_path, monkeypatch):
    """A query node's store with a 0.4 s version cache, another node's store, and a count of opens."""
    opens = []
    real = lance.dataset

    def counted(*args, **kwargs):
        opens.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(lance, "dataset", counted)
    root = StorageRoot.parse(str(tmp_path / "data"))
    mine, other = TableStore(root, version_check_seconds=0.4), TableStore(root)
    mine.create("t", 2, "l2")
    return mine, other, opens


def _rows(n: int) -> pa.Table:
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(2 * n, np.float32)), 2)})


def test_a_warm_search_snapshot_makes_no_storage_call(store_pair) -> None:
    mine, _, opens = store_pair
    first = mine.snapshot("t", cached=True)
    opens.clear()
    for _ in range(50):
        assert mine.snapshot("t", cached=True) is first
    assert opens == []
    assert mine.snapshot("t").version == first.version and len(opens) == 1  # writes' snapshots: always fresh


def test_own_writes_at_once_others_within_the_bound(store_pair) -> None:
    mine, other, _ = store_pair
    v0 = mine.snapshot("t", cached=True).version
    v1 = mine.append("t", _rows(1))
    mine.written("t")  # as group commit does before acknowledging
    assert mine.snapshot("t", cached=True).version == v1 > v0
    v2 = other.append("t", _rows(1))  # another query node's write
    assert mine.snapshot("t", cached=True).version == v1
    time.sleep(0.45)
    assert mine.snapshot("t", cached=True).version == v2
