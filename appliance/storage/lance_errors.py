"""The one boundary between Lance (with Arrow and DataFusion inside it) and the appliance's errors.

Lance reports almost everything as `OSError` or `ValueError` (`pyarrow.ArrowInvalid` is one), whatever the
cause: a filter naming no column, a division by zero met while filtering, a commit that lost a race with
other writers, a table that does not exist, a store that cannot be reached. Only the message tells them
apart. Instead of every call site matching message text, storage entry points run Lance inside
`map_lance_errors()`, as httpx's `map_exceptions` does for transport errors:

    with map_lance_errors():
        dataset.delete(predicate)

and an error of Lance's leaves it as one of the appliance's classes (appliance/errors.py):

| what happened                                      | raised              | status |
| -------------------------------------------------- | ------------------- | ------ |
| commit conflict that survived Lance's own retries  | RetryableConflict   | 409, Retry-After |
| "Too many concurrent writers", retry timeouts      | Overloaded          | 503, Retry-After |
| DataFusion ran out of its memory pool              | LimitExceeded       | 400    |
| bad filter / SQL / data (parse, plan, run time)    | InvalidInput        | 400    |
| a dataset that does not exist                      | NotFound            | 404    |
| any other OSError (unreachable store, credentials) | StorageUnavailable  | 503    |

`classify(exc)` gives the mapped error without raising it (None when the exception is not Lance's to map:
a bug of ours stays a 500 with its traceback). Order matters: a conflict's message can also contain
words of a data error, so conflicts and contention are recognised first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from appliance.errors import (
    ApplianceError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Overloaded,
    RetryableConflict,
    StorageUnavailable,
)

# Lance: Error::CommitConflict / RetryableCommitConflict / IncompatibleTransaction, and the message of a
# commit that used up `max_retries`.
_CONFLICT = ("commit conflict", "failed to commit the transaction", "incompatible with concurrent transaction",
             "incompatibletransaction", "retryable commit conflict")
# Lance: Error::TooMuchWriteContention ("Too many concurrent writers ... retry_timeout of 30 s").
_CONTENTION = ("too many concurrent writers", "toomuchwritecontention", "retry_timeout", "retry timeout")
# DataFusion's memory pool ("Resources exhausted: Failed to allocate additional ...").
_EXHAUSTED = ("resources exhausted",)
# The request's fault: Lance's own input errors, and DataFusion/Arrow errors while parsing, planning or
# evaluating a filter or an SQL expression on the data.
_BAD_INPUT = ("invalid user input", "invalid argument error", "lanceerror(schema)", "lanceerror(arrow)",
              "query execution error", "error applying filter", "error parsing", "error during planning",
              "error optimizing sql filter", "sql parser error", "schema error", "compute error", "cast error",
              "divide by zero", "regular expression", "regex parse error", "arithmetic overflow",
              "not implemented", "notimplemented", "invalid data type", "type mismatch")
_DATASET_NOT_FOUND = re.compile(r"dataset at path \S+ was not found|datasetnotfound", re.IGNORECASE)


def clean_lance_message(exc: BaseException) -> str:
    """Lance's messages end with the Rust source location of the build machine; clients need not see it."""
    return re.sub(r",\s*/\S+\.rs:\d+:\d+", "", str(exc)).strip()[:2000]


def _is_panic(exc: BaseException) -> bool:
    """pyo3 turns a Rust panic into `pyo3_runtime.PanicException`, a BaseException (not an Exception)."""
    return type(exc).__name__ == "PanicException"


def classify(exc: BaseException, what: str = "the request", by_type: bool = True) -> ApplianceError | None:
    """The appliance error an exception raised by Lance, Arrow or DataFusion stands for; None when it is
    not one of theirs to map (ours already, or a programming error that should stay a 500). `by_type`
    False maps only errors whose message Lance marked, for code that catches more than Lance's calls."""
    if isinstance(exc, ApplianceError):
        return exc
    if not isinstance(exc, OSError | ValueError | TypeError | RuntimeError | pa.ArrowException) \
            and not _is_panic(exc):
        return None
    text = str(exc).lower()
    detail = clean_lance_message(exc)
    if any(marker in text for marker in _CONFLICT):
        return RetryableConflict("the write lost a race with concurrent writers; retry it", detail)
    if any(marker in text for marker in _CONTENTION):
        return Overloaded("too many concurrent writers on this table; retry shortly", detail)
    if any(marker in text for marker in _EXHAUSTED):
        return LimitExceeded(f"{what} needs more memory than a query may use", detail)
    if _DATASET_NOT_FOUND.search(text):
        return NotFound("the table was not found", detail)
    if any(marker in text for marker in _BAD_INPUT) or _is_panic(exc):
        if "filter" in text or "query execution" in text:
            return InvalidInput("the filter failed while running", detail)
        return InvalidInput(f"Lance refused {what}", detail)
    if not by_type:
        return None
    if isinstance(exc, OSError):
        return StorageUnavailable("storage unavailable", detail)
    if isinstance(exc, ValueError | TypeError | pa.ArrowException):  # ArrowInvalid, ArrowTypeError...
        return InvalidInput(f"Lance refused {what}", detail)
    return None  # a RuntimeError Lance did not explain: a 500 with its traceback


@contextmanager
def map_lance_errors(what: str = "the request") -> Iterator[None]:
    """Run Lance calls inside this; their errors leave as the appliance's (see the module's table).
    `what` names the operation in the message ("the filter", "the update"...)."""
    try:
        yield
    except ApplianceError:
        raise
    except BaseException as exc:
        mapped = classify(exc, what)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


def raise_if_rejected(exc: BaseException) -> None:
    """For call sites that catch Lance's errors themselves: raise the mapped error when the request is to
    blame (4xx: bad input, conflict, not found) or the table is contended (503 Overloaded); return otherwise,
    so the caller re-raises the original (a storage fault stays a 503 from the web layer)."""
    mapped = classify(exc, by_type=False)
    if mapped is not None and mapped is not exc and (mapped.status < 500 or isinstance(mapped, Overloaded)):
        raise mapped from exc
