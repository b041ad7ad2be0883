"""Group commit (appliance/query/commits.py): rounds, per-request failures, and bounded conflict retries."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from appliance.errors import InvalidInput, Overloaded, RetryableConflict
from appliance.query.commits import GroupCommitter
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type


def table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"n": pa.array(range(start, start + n), pa.int64())})


def test_appends_queued_behind_a_round_commit_together_in_one_version() -> None:
    commits: list[int] = []
    gate = threading.Event()

    def commit(name: str, parts: list[pa.Table]) -> int:
        if not commits:
            gate.wait(10)  # the first round runs while the others arrive
        commits.append(sum(p.num_rows for p in parts))
        return len(commits)

    committer = GroupCommitter(commit, max_rows=1000, retry_seconds=1)
    versions: dict[int, int] = {}
    targets = [lambda i=i: versions.__setitem__(i, committer.append("t", table(10, i * 10))) for i in range(6)]
    threads = [threading.Thread(target=t) for t in targets]
    threads[0].start()
    time.sleep(0.1)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert commits == [10, 50]  # the lone first write, then the five queued ones as one append
    assert versions == {0: 1, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2}
    assert committer.rounds == 2 and committer.writes == 6


def test_other_writes_are_rounds_of_their_own_in_arrival_order() -> None:
    log: list[str] = []
    gate = threading.Event()

    def commit(name: str, parts: list[pa.Table]) -> int:
        log.append(f"append {len(parts)}")
        return len(log)

    committer = GroupCommitter(commit, max_rows=1000, retry_seconds=1)

    def op(label: str) -> str:
        if label == "first":
            gate.wait(10)
        log.append(label)
        return label

    threads = [threading.Thread(target=lambda: committer.run("t", lambda: op("first")))]
    threads += [threading.Thread(target=lambda: committer.run("t", lambda: op("update")))]
    threads += [threading.Thread(target=lambda i=i: committer.append("t", table(1, i))) for i in range(3)]
    threads += [threading.Thread(target=lambda: committer.run("t", lambda: op("delete")))]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert log == ["first", "update", "append 3", "delete"]


def test_a_bad_append_fails_alone(tmp_path) -> None:
    store = TableStore(StorageRoot.parse(str(tmp_path / "data")))
    store.create("t", 2, "l2", {"n": "int64"})

    def part(n: int) -> pa.Table:
        return store.conform_rows("t", pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(2 * n, np.float32)), 2).cast(
                vector_type(2)),
            "n": pa.array(range(n), pa.int64())}))

    first, good = part(1), part(2)
    bad = good.set_column(1, "n", pa.array(["x", "y"]))  # conformed once, then spoiled
    gate, rounds = threading.Event(), []

    def commit(name: str, parts: list[pa.Table]) -> int:
        if not rounds:
            gate.wait(10)
        rounds.append(len(parts))
        return store.append_parts(name, parts)

    committer = GroupCommitter(commit, max_rows=1000, retry_seconds=1)
    outcome: dict[str, object] = {}

    def submit(label: str, rows: pa.Table) -> None:
        try:
            outcome[label] = committer.append("t", rows)
        except Exception as exc:  # noqa: BLE001
            outcome[label] = exc

    threads = [threading.Thread(target=submit, args=a) for a in (("first", first), ("good", good), ("bad", bad))]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert rounds[:2] == [1, 2]  # good and bad were tried as one round, then alone
    assert isinstance(outcome["first"], int) and isinstance(outcome["good"], int)
    assert not isinstance(outcome["bad"], int), outcome
    assert store.count("t") == 3


@pytest.mark.parametrize(("message", "error"), [
    ("Commit conflict for version 875: Failed to commit the transaction after 20 retries., x.rs:1:2",
     RetryableConflict),
    ("Too many concurrent writers. Attempted 2 times, but failed on retry_timeout of 30.000 seconds.",
     Overloaded),
])
def test_conflicts_are_retried_then_answered_retryable(message: str, error: type) -> None:
    committer = GroupCommitter(lambda *_: 0, max_rows=10, retry_seconds=0.3)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(message)
        return "done"

    assert committer.run("t", flaky) == "done" and len(calls) == 3
    started = time.monotonic()
    with pytest.raises(error) as caught:
        committer.run("t", lambda: (_ for _ in ()).throw(OSError(message)))
    assert time.monotonic() - started < 2
    assert caught.value.headers().get("Retry-After")
    assert caught.value.status in (409, 503)


def test_other_errors_are_not_retried() -> None:
    committer = GroupCommitter(lambda *_: 0, max_rows=10, retry_seconds=5)
    calls = []

    def bad() -> None:
        calls.append(1)
        raise InvalidInput("no such column")

    with pytest.raises(InvalidInput):
        committer.run("t", bad)
    assert calls == [1]
