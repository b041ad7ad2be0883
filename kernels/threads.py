"""A thread budget for the compute libraries.

Executors run several gunicorn threads on few cores; if BLAS and OpenMP each also start one thread per
core, a 2-core host runs dozens of spinning threads and every query slows down. Callers set a budget
once per process (`set_thread_budget`), or for one block of work (`thread_budget`: an explicit index
build on a query node takes every core for its duration and gives the process its budget back after).

Two kinds of limit, with different scopes: BLAS's thread count (numpy's OpenBLAS) is one per process (and
OpenBLAS ignores a thread other than the main one raising it once the main thread has set it), while
OpenMP's (faiss, and the OpenBLAS faiss links, which follows OpenMP) belongs to each thread: a thread that
raises it raises it for its own calls only, and `set_thread_budget` reaches other threads' faiss calls only
through OMP_NUM_THREADS in the environment the process started with.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

_limits: threadpool_limits | None = None
_block_lock = threading.Lock()
_blocks = 0  # thread_budget blocks open in this process
_blas_before: threadpool_limits | None = None  # the BLAS limits the first open block found


def _faiss():  # noqa: ANN202 - the faiss module or None
    try:
        import faiss
    except ImportError:  # faiss is optional for the numpy path
        return None
    return faiss


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_thread_budget(threads: int) -> None:
    """Cap BLAS and OpenMP (faiss) threads in this process at `threads`."""
    global _limits
    threads = max(1, int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _limits = threadpool_limits(limits=threads)
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)


@contextmanager
def thread_budget(threads: int) -> Iterator[int]:
    """Run the block with `threads` BLAS and OpenMP (faiss) threads (0: `available_cores()`); yields the
    count. On leaving, the calling thread's OpenMP budget is restored, and the process's BLAS budget once
    the last open block (of any thread) has left, so overlapping blocks never leave the raised budget
    behind. While a block is open, BLAS calls of other threads of the process may use its budget too."""
    global _blocks, _blas_before
    threads = int(threads) if threads > 0 else available_cores()
    faiss = _faiss()
    omp_before = faiss.omp_get_max_threads() if faiss is not None else None
    with _block_lock:
        if _blocks == 0:
            _blas_before = threadpool_limits(limits=threads, user_api="blas")
        else:
            threadpool_limits(limits=threads, user_api="blas")
        _blocks += 1
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    try:
        yield threads
    finally:
        with _block_lock:
            _blocks -= 1
            if _blocks == 0 and _blas_before is not None:
                _blas_before.restore_original_limits()
                _blas_before = None
        if faiss is not None:  # last: restoring faiss's OpenBLAS above may have set this thread's OpenMP budget
            faiss.omp_set_num_threads(omp_before)
