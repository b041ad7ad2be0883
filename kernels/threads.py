"""A thread budget for the compute libraries.

Executors run several gunicorn threads on few cores; if BLAS and OpenMP each also start one thread per
core, a 2-core host runs dozens of spinning threads and every query slows down. Callers set a budget
once per process.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits

_limits: threadpool_limits | None = None


def set_thread_budget(threads: int) -> None:
    """Cap BLAS and OpenMP (faiss) threads in this process at `threads`."""
    global _limits
    threads = max(1, int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _limits = threadpool_limits(limits=threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # faiss is optional for the numpy path
        pass
