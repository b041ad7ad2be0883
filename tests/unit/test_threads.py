"""kernels.thread_budget: a block of work gets its thread budget, and the process gets its own back after,
however blocks of several threads overlap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from kernels.threads import available_cores, thread_budget


def blas_threads() -> set[int]:
    """The thread counts of every BLAS library loaded (numpy's and faiss's OpenBLAS)."""
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def one_thread():
    """The process as a node runs it: one BLAS and one OpenMP thread (restored after the test)."""
    before = faiss.omp_get_max_threads()
    with threadpool_limits(limits=1):
        faiss.omp_set_num_threads(1)
        yield
    faiss.omp_set_num_threads(before)


def test_a_block_raises_the_budget_and_restores_it(one_thread):
    with thread_budget(3) as threads:
        assert threads == 3
        assert blas_threads() == {3}
        assert faiss.omp_get_max_threads() == 3
    assert blas_threads() == {1}
    assert faiss.omp_get_max_threads() == 1


def test_zero_means_every_available_core(one_thread):
    with thread_budget(0) as threads:
        assert threads == available_cores() >= 1
        assert blas_threads() == {threads}
        assert faiss.omp_get_max_threads() == threads
    assert blas_threads() == {1}


def test_the_budget_is_restored_when_the_block_raises(one_thread):
    with pytest.raises(RuntimeError), thread_budget(3):
        raise RuntimeError("build failed")
    assert blas_threads() == {1}
    assert faiss.omp_get_max_threads() == 1


def test_nested_blocks_keep_the_budget_until_the_outer_one_leaves(one_thread):
    with thread_budget(3):
        with thread_budget(3):
            pass
        assert blas_threads() == {3}
        assert faiss.omp_get_max_threads() == 3
    assert blas_threads() == {1}
    assert faiss.omp_get_max_threads() == 1


def test_overlapping_blocks_of_two_threads_restore_each_threads_openmp_budget(one_thread):
    # Thread A opens a block, thread B opens one, A leaves first: each thread's OpenMP budget (one per
    # thread: faiss's) returns to what it was in that thread, B's stays raised until B leaves, and the
    # process's BLAS budget is back once both left. (OpenBLAS ignores a worker thread raising its count
    # after the main thread set it, so the process-wide BLAS part is checked in a process of its own below.)
    steps = {name: threading.Event() for name in ("a_in", "b_in", "a_out")}
    seen: dict[str, int] = {}

    def a() -> None:
        faiss.omp_set_num_threads(1)
        with thread_budget(3):
            steps["a_in"].set()
            steps["b_in"].wait(60)
        seen["a_after"] = faiss.omp_get_max_threads()
        steps["a_out"].set()

    def b() -> None:
        faiss.omp_set_num_threads(1)
        steps["a_in"].wait(60)
        with thread_budget(3):
            steps["b_in"].set()
            steps["a_out"].wait(60)
            seen["b_inside_after_a_left"] = faiss.omp_get_max_threads()
        seen["b_after"] = faiss.omp_get_max_threads()

    workers = [threading.Thread(target=a), threading.Thread(target=b)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert seen == {"a_after": 1, "b_inside_after_a_left": 3, "b_after": 1}
    assert blas_threads() == {1}
    assert faiss.omp_get_max_threads() == 1


def test_a_block_leaves_other_threads_openmp_budget_alone(one_thread):
    inside = threading.Event()
    release = threading.Event()

    def build() -> None:
        with thread_budget(3):
            inside.set()
            release.wait(60)

    worker = threading.Thread(target=build)
    worker.start()
    assert inside.wait(60)
    try:
        assert faiss.omp_get_max_threads() == 1  # this thread's faiss calls keep their one thread
    finally:
        release.set()
        worker.join(120)


OVERLAP = """
import json, threading
import numpy as np
from threadpoolctl import threadpool_info
from kernels.threads import thread_budget

def work():  # a product BLAS splits over its threads: OpenBLAS has started them (raising spawns them lazily)
    m = np.ones((512, 512), np.float32)
    return m @ m

def blas():
    return sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
                   and "scipy" in lib["prefix"]})  # numpy's OpenBLAS: one count per process

steps = {name: threading.Event() for name in ("a_in", "b_in", "a_out")}
seen = {}

def a():
    with thread_budget(3):
        work()
        steps["a_in"].set()
        steps["b_in"].wait(60)
    seen["after_a_left"] = blas()
    steps["a_out"].set()

def b():
    steps["a_in"].wait(60)
    with thread_budget(3):
        seen["both_in"] = blas()
        steps["b_in"].set()
        steps["a_out"].wait(60)
        work()
    seen["after_both_left"] = blas()

workers = [threading.Thread(target=a), threading.Thread(target=b)]
for w in workers:
    w.start()
for w in workers:
    w.join(120)
print(json.dumps(seen))
"""


def test_overlapping_blocks_keep_the_processs_blas_budget_until_the_last_leaves():
    # Request threads of a node whose main thread never set BLAS's count (a query node: the environment
    # sets it): thread A opens a block, B opens one, A leaves first; B's BLAS budget must hold until B leaves.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", OVERLAP], env=env, capture_output=True, text=True, timeout=120,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert json.loads(out.stdout) == {"both_in": [3], "after_a_left": [3], "after_both_left": [1]}


@pytest.mark.parametrize("policy, spins", [(None, "'0'"), ("ACTIVE", None)])
def test_faiss_threads_sleep_while_they_wait_unless_the_environment_says(policy, spins):
    # libgomp reads its wait policy once, when faiss loads; unset, its threads spin 300,000 times per wait
    # (GOMP_SPINCOUNT), which on cores shared with serving burns CPU for nothing. It reports the count it
    # took on stderr with OMP_DISPLAY_ENV=VERBOSE.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", "import kernels, faiss"], env=env, capture_output=True, text=True,
                         timeout=120, check=True, cwd=Path(__file__).resolve().parents[2])
    count = next(line.split("=", 1)[1].strip() for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line)
    assert count == spins if spins else count != "'0'"
