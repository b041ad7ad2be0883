"""The one boundary from Lance/Arrow/DataFusion errors to the appliance's (appliance/storage/lance_errors.py),
driven with errors real Lance calls raise."""

from __future__ import annotations

import lance
import pyarrow as pa
import pytest

from appliance.errors import (
    InvalidInput,
    NotFound,
    Overloaded,
    RetryableConflict,
    StorageUnavailable,
)
from appliance.storage.lance_errors import classify, map_lance_errors, raise_if_rejected


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    table = pa.table({"id": pa.array(range(50), pa.int64()), "s": [f"s{i}" for i in range(50)]})
    return lance.write_dataset(table, str(tmp_path_factory.mktemp("t") / "t.lance"), enable_stable_row_ids=True)


@pytest.mark.parametrize("predicate", ["regexp_match(s, '(') IS NOT NULL", "id / 0 > 1", "cast(s as int) = 1",
                                       "nosuch = 1", "id >", "regexp_like(s, '(')", "foo(s) = 1"])
@pytest.mark.parametrize("call", ["to_table", "count_rows"])
def test_filters_failing_in_lance_are_bad_input(dataset, predicate: str, call: str) -> None:
    with pytest.raises(InvalidInput) as caught, map_lance_errors("the filter"):
        if call == "to_table":
            dataset.to_table(columns=[], with_row_id=True, filter=predicate)
        else:
            dataset.count_rows(predicate)
    assert caught.value.status == 400
    assert ".rs:" not in (caught.value.detail or "")  # the build machine's source paths are cut


def test_a_missing_dataset_is_not_found(tmp_path) -> None:
    with pytest.raises(NotFound), map_lance_errors():
        lance.dataset(str(tmp_path / "none.lance"))


@pytest.mark.parametrize(("message", "expected"), [
    ("Commit conflict for version 875: Failed to commit the transaction after 20 retries", RetryableConflict),
    ("Retryable commit conflict for version 12: preempted by concurrent transaction Delete", RetryableConflict),
    ("Too many concurrent writers. Lance exceeded the retry_timeout of 30 s", Overloaded),
    ("LanceError(IO): Generic S3 error: error sending request: connection refused", StorageUnavailable),
])
def test_write_contention_and_storage_faults(message: str, expected: type) -> None:
    mapped = classify(OSError(message))
    assert type(mapped) is expected
    assert mapped.status in (409, 503)
    if expected is not StorageUnavailable:
        assert mapped.headers().get("Retry-After")  # the lancedb client and ours retry these


def test_our_errors_and_bugs_pass_through() -> None:
    with pytest.raises(KeyError), map_lance_errors():
        raise KeyError("a bug of ours stays a 500")
    with pytest.raises(NotFound), map_lance_errors():
        raise NotFound("already ours")
    assert classify(RuntimeError("something Lance did not explain")) is None


def test_raise_if_rejected_leaves_unmarked_errors_to_the_caller() -> None:
    raise_if_rejected(ValueError("a numpy shape error of ours"))  # not Lance's: the caller re-raises it
    raise_if_rejected(OSError("connection reset"))  # a storage fault: the caller re-raises it (503)
    with pytest.raises(InvalidInput):
        raise_if_rejected(OSError("Query Execution error: Error applying filter expression: Divide by zero"))
    with pytest.raises(RetryableConflict):
        raise_if_rejected(OSError("Commit conflict for version 3: x"))
