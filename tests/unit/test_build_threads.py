"""An explicit build on a query node runs with `build_threads` BLAS/faiss threads and gives the node its
own budget back afterwards (a real Lance table and index store on a local root)."""

from __future__ import annotations

import faiss
import numpy as np
import pyarrow as pa
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from appliance.config import Settings
from appliance.index import IndexParams, IndexStore
from appliance.query.catalog import IndexCatalog
from appliance.query.service import QueryService
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type
from kernels.threads import available_cores

DIM = 8


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def service(tmp_path):
    """A query node's service over a 3,000-row table, in a process run as the nodes run: one thread."""
    root = StorageRoot.parse(str(tmp_path / "data"))
    tables = TableStore(root)
    tables.create("t", DIM, "l2", {"row": "int64"})
    vectors = np.random.default_rng(0).standard_normal((3000, DIM)).astype(np.float32)
    tables.append("t", pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(
        vector_type(DIM)), "row": np.arange(3000)}))
    before = faiss.omp_get_max_threads()
    with threadpool_limits(limits=1):
        faiss.omp_set_num_threads(1)
        yield QueryService(tables, None, IndexCatalog(IndexStore(root)))  # no executors needed to build
    faiss.omp_set_num_threads(before)


def build(service: QueryService) -> list[tuple[int, set[int]]]:
    """Build in batches of 1,000 rows; (faiss's OpenMP threads, BLAS threads) seen by each batch."""
    seen: list[tuple[int, set[int]]] = []
    service.table("t").build_index(IndexParams(codec="flat", nlist=4, batch_rows=1000),
                                   progress=lambda _: seen.append((faiss.omp_get_max_threads(), blas_threads())))
    return seen


@pytest.mark.parametrize("setting, threads", [(3, 3), (0, available_cores())])
def test_an_explicit_build_runs_with_build_threads_and_restores_the_nodes_budget(service, setting, threads):
    service.build_threads = setting
    assert build(service) == [(threads, {threads})] * 3
    assert faiss.omp_get_max_threads() == 1 and blas_threads() == {1}


def test_without_the_setting_a_build_keeps_the_processs_threads(service):
    assert build(service) == [(1, {1})] * 3


def test_build_threads_is_a_setting_of_every_source():
    assert Settings().build_threads == 0
    assert Settings.load(env={"APPLIANCE_BUILD_THREADS": "2"}).build_threads == 2
