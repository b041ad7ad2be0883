"""The CUDA path of every kernel, run on the CPU, against the CPU backend; and the same on a real GPU.

The CUDA path is not separate code: each kernel is written once against an array module `xp`, and
`device="cuda"` only makes `xp` cupy. So the CPU twin of the CUDA path is that code with `xp` a module
that behaves like cupy but computes with numpy. `FakeCupy` below is such a module, and what it checks
is limited to this, honestly:

- it exercises the device branches of `kernels.backend` (`array_module("cuda")`, `module_of` on a
  device array, `to_host` through `.get()`), because its arrays are a distinct type from module "cupy";
- it is strict the way cupy is about mixing memories: passing a host (numpy) array to a device function
  or ufunc raises, so a kernel that forgets a transfer fails here, and every public kernel must hand
  back plain numpy arrays (a forgotten `to_host` shows up as a device array leaking out);
- it records every `xp.NAME` the kernels use; the test asserts each one is in `CUPY_NAMES`, a list
  of names checked against cupy's API reference, so a numpy-only function cannot slip into the path.

It does not check cupy's own numerics: GPU sort and argmin tie rules, float summation order in cuBLAS
and in `add.at` (atomic adds). Those are what the `@pytest.mark.gpu` tests at the end compare on a real
device, with tolerances where the summation order may differ; they are skipped without a CUDA device.
"""

from __future__ import annotations

import types
from importlib import import_module
from typing import Any

import numpy as np
import pytest

import kernels
import kernels.backend
from kernels import (
    METRICS,
    assign,
    kmeans,
    merge_topk,
    pairwise_distances,
    pq_distances,
    pq_encode,
    pq_train,
    search_block,
    topk,
)
from kernels.backend import module_of, resolve, to_host

topk_module = import_module("kernels.topk")  # `kernels.topk` is the function

# Functions and constants of the array module that cupy provides (cupy 13 API reference). `add` is used
# as `add.at`, which cupy's ufuncs support since v12.
CUPY_NAMES = {
    "abs", "add", "arange", "argmin", "argpartition", "argsort", "asarray", "ascontiguousarray", "bincount",
    "concatenate", "cumsum", "einsum", "empty", "full", "isfinite", "isnan", "maximum", "nextafter", "nonzero",
    "ones", "repeat", "sqrt", "subtract", "take", "take_along_axis", "where", "zeros",
}


class DeviceArray(np.ndarray):
    """A numpy array posing as a cupy one: its type lives in module "cupy", and `.get()` copies to the host."""

    __module__ = "cupy._core.core"

    def get(self) -> np.ndarray:
        return np.array(self.view(np.ndarray))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_host(ufunc.__name__, inputs + tuple(kwargs.get("out", ())))
        inputs = tuple(_host_view(value) for value in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(_host_view(value) for value in kwargs["out"])
        return _device(getattr(ufunc, method)(*inputs, **kwargs))


def _host_view(value: Any) -> Any:
    return value.view(np.ndarray) if isinstance(value, DeviceArray) else value


def _device(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    return value


def _refuse_host(name: str, values: Any) -> None:
    """cupy refuses numpy arrays where it wants device arrays (only scalars and 0-d arrays mix freely)."""
    for value in values:
        if isinstance(value, (list, tuple)):
            _refuse_host(name, value)
        elif isinstance(value, np.ndarray) and not isinstance(value, DeviceArray) and value.ndim > 0:
            raise TypeError(f"host (numpy) array passed to device function {name!r}")


class _DeviceUfunc:
    def __init__(self, name: str, ufunc: np.ufunc) -> None:
        self.name, self.ufunc = name, ufunc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _refuse_host(self.name, args)
        return self.ufunc(*[_device(a) if isinstance(a, np.ndarray) else a for a in args], **kwargs)

    def at(self, target: Any, indices: Any, values: Any = None) -> None:
        _refuse_host(f"{self.name}.at", (target, indices, values))
        self.ufunc.at(_host_view(target), _host_view(indices), _host_view(values))


class FakeCupy(types.ModuleType):
    """numpy's functions returning DeviceArrays; `used` collects the names the kernels asked for."""

    TRANSFERS = {"asarray", "ascontiguousarray"}  # cupy.asarray(numpy array) is an explicit host-to-device copy

    def __init__(self) -> None:
        super().__init__("cupy")
        self.used: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        target = getattr(np, name)
        if name.startswith("__"):
            return target
        self.used.add(name)
        if isinstance(target, np.ufunc):
            return _DeviceUfunc(name, target)
        if isinstance(target, type) or not callable(target):
            return target

        def device_function(*args: Any, **kwargs: Any) -> Any:
            if name not in self.TRANSFERS:
                _refuse_host(name, args)
            args = tuple(_host_view(a) for a in args)
            return _device(target(*args, **kwargs))

        return device_function


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCupy:
    """`device="cuda"` (and KERNELS_DEVICE=auto) resolving to the numpy-backed stand-in for cupy. The CPU
    results it is compared with come from the same array-module code on numpy (KERNELS_CPU=numpy): the
    faiss ops of the CPU route are compared with float64 references in the property tests instead."""
    fake = FakeCupy()
    monkeypatch.setattr(kernels.backend, "cupy_module", lambda: fake)
    monkeypatch.delenv("KERNELS_DEVICE", raising=False)
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    yield fake
    assert fake.used <= CUPY_NAMES, f"kernels used array-module names cupy lacks: {sorted(fake.used - CUPY_NAMES)}"


def _host_result(value: Any) -> Any:
    """Public kernels must hand back numpy arrays, never device ones."""
    if isinstance(value, tuple):
        return tuple(_host_result(v) for v in value)
    assert type(value) is np.ndarray, f"a device array leaked out: {type(value)}"
    return value


def _on_device(*arrays: np.ndarray) -> list[DeviceArray]:
    return [np.array(a).view(DeviceArray) for a in arrays]


def _same(got: tuple[np.ndarray, ...] | np.ndarray, want: tuple[np.ndarray, ...] | np.ndarray) -> None:
    for g, w in zip(got, want, strict=True) if isinstance(want, tuple) else [(got, want)]:
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def _data(seed: int, n: int = 300, dim: int = 8, ints: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if ints:  # small integers: many exact ties, and every distance exact
        return rng.integers(-3, 4, (n, dim)).astype(np.float32)
    return rng.normal(size=(n, dim)).astype(np.float32)


# --------------------------------------------------------------------------------- the stand-in itself


def test_stand_in_takes_the_device_branches(fake_cuda):
    assert kernels.cuda_available() and resolve() == "cuda" and resolve("cpu") == "cpu"
    (x,) = _on_device(np.ones((2, 3), np.float32))
    assert module_of(x) is fake_cuda and module_of(np.ones(2)) is np
    assert type(to_host(x)) is np.ndarray
    with pytest.raises(TypeError, match="host"):
        x + np.ones((2, 3), np.float32)  # cupy refuses to mix memories; so does the stand-in
    with pytest.raises(TypeError, match="host"):
        fake_cuda.argsort(np.ones(3))


def test_resolve_without_gpu(monkeypatch):
    monkeypatch.setattr(kernels.backend, "cupy_module", lambda: None)
    monkeypatch.setenv("KERNELS_DEVICE", "auto")
    assert resolve() == "cpu"
    monkeypatch.setenv("KERNELS_DEVICE", "cpu")
    assert resolve() == "cpu"
    with pytest.raises(RuntimeError, match="cuda"):
        resolve("cuda")
    with pytest.raises(ValueError, match="unknown kernels device"):
        resolve("tpu")


# ------------------------------------------------------------------------- device= kernels, CPU twins


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("ints", [False, True])
def test_kmeans_twin(fake_cuda, metric, ints):
    x = _data(1, ints=ints)
    for k in (1, 7, 400):  # 400 > rows: empty clusters on every iteration
        want = kmeans(x, k, metric=metric, iters=4, seed=5, device="cpu")
        _same(_host_result(kmeans(x, k, metric=metric, iters=4, seed=5, device="cuda")), want)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("ints", [False, True])
def test_assign_twin(fake_cuda, metric, ints):
    x, centroids = _data(2, ints=ints), _data(3, n=17, ints=ints)
    _same(_host_result(assign(x, centroids, metric=metric, device="cuda")),
          assign(x, centroids, metric=metric, device="cpu"))


@pytest.mark.parametrize("nbits", [8, 4])
def test_pq_twins(fake_cuda, nbits):
    x = _data(4, n=400, dim=12)
    codebooks = pq_train(x, 3, nbits=nbits, iters=3, seed=2, device="cpu")
    assert codebooks.shape == (3, 1 << nbits, 4)
    _same(_host_result(pq_train(x, 3, nbits=nbits, iters=3, seed=2, device="cuda")), codebooks)
    codes = pq_encode(x, codebooks, device="cpu")
    _same(_host_result(pq_encode(x, codebooks, device="cuda")), codes)
    queries = _data(5, n=9, dim=12)
    for metric in ("l2", "dot"):
        _same(_host_result(pq_distances(queries, codes, codebooks, metric, device="cuda")),
              pq_distances(queries, codes, codebooks, metric, device="cpu"))


def test_auto_device_takes_the_cuda_path(fake_cuda):
    x = _data(6)
    before = set(fake_cuda.used)
    _same(_host_result(kmeans(x, 5, iters=2)), kmeans(x, 5, iters=2, device="cpu"))
    assert fake_cuda.used - before, "KERNELS_DEVICE=auto with a (stand-in) GPU did not use it"


# ------------------------------------------------------------- array-generic kernels on device arrays


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("ints", [False, True])
def test_distances_and_search_twin(fake_cuda, metric, ints):
    queries, vectors = _data(7, n=13, ints=ints), _data(8, n=500, ints=ints)
    ids = np.random.default_rng(9).permutation(10_000)[:500].astype(np.uint64)
    dq, dv, dids = _on_device(queries, vectors, ids)
    got = pairwise_distances(dq, dv, metric)
    assert module_of(got) is fake_cuda
    _same(to_host(got), pairwise_distances(queries, vectors, metric))
    for k in (1, 10, 600):
        for block_rows in (64, 16384):
            want = search_block(queries, vectors, ids, metric, k, block_rows=block_rows)
            got = search_block(dq, dv, dids, metric, k, block_rows=block_rows)
            assert module_of(got[0]) is fake_cuda
            _same(tuple(to_host(g) for g in got), want)


def test_topk_and_merge_twin(fake_cuda, monkeypatch):
    rng = np.random.default_rng(10)
    distances = rng.choice(np.array([0, 0.5, 1, 2, np.inf, np.nan], np.float32), size=(6, 9000))
    ids = rng.permutation(2**20)[:9000].astype(np.uint64)
    dd, dids = _on_device(distances, ids)
    # Both selections run: the bound from the first columns (share 0: never too many candidates), and the
    # whole-row partition it falls back to (share 10**9: always too many).
    for share in (0, 10**9):
        monkeypatch.setattr(topk_module, "MAX_CANDIDATE_SHARE", share)
        for k in (1, 5, 9001):
            want = topk(distances, ids, k)
            _same(tuple(to_host(g) for g in topk(dd, dids, k)), want)
            parts = [topk(distances[:, a : a + 3000], ids[a : a + 3000], k) for a in (0, 3000, 6000)]
            device_parts = [tuple(_on_device(*part)) for part in parts]
            _same(tuple(to_host(g) for g in merge_topk(device_parts, k)), merge_topk(parts, k))


# ----------------------------------------------------------------------------------- real GPU (cupy)

needs_gpu = pytest.mark.skipif(not kernels.cuda_available(),
                               reason="no CUDA device: cupy is not installed (pip install .[gpu]) or sees no GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("metric", METRICS)
def test_gpu_search_and_assign_match_cpu(metric):
    import cupy

    queries, vectors, centroids = _data(11, n=50), _data(12, n=5000), _data(13, n=64)
    ids = np.arange(5000, dtype=np.uint64)
    # Products are summed in another order on the GPU, so distances agree to rounding, and ids wherever
    # the gap between neighbours is wider than that rounding (random normal data: everywhere at k=10).
    want_ids, want_d = search_block(queries, vectors, ids, metric, 10)
    got_ids, got_d = (g.get() for g in search_block(cupy.asarray(queries), cupy.asarray(vectors), cupy.asarray(ids),
                                                    metric, 10))
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)
    labels, dists = assign(vectors, centroids, metric=metric, device="cuda")
    cpu_labels, cpu_dists = assign(vectors, centroids, metric=metric, device="cpu")
    assert np.mean(labels == cpu_labels) > 0.999
    np.testing.assert_allclose(dists, cpu_dists, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_gpu_exact_ties_resolve_like_cpu():
    # Small integers make every distance exact on both devices, so ties (and their order) must agree exactly.
    import cupy

    queries, vectors = _data(14, n=20, ints=True), _data(15, n=3000, ints=True)
    ids = np.random.default_rng(16).permutation(3000).astype(np.uint64)
    for metric in ("l2", "dot"):
        want = search_block(queries, vectors, ids, metric, 25)
        got = search_block(cupy.asarray(queries), cupy.asarray(vectors), cupy.asarray(ids), metric, 25)
        _same(tuple(g.get() for g in got), want)
        centroids = vectors[:40]
        _same(assign(vectors, centroids, metric=metric, device="cuda"),
              assign(vectors, centroids, metric=metric, device="cpu"))


@pytest.mark.gpu
@needs_gpu
def test_gpu_kmeans_and_pq_match_cpu(monkeypatch):
    # Cluster sums use atomic adds on the GPU (any order), so centroids agree to rounding, not bit for bit.
    # The CPU side is the same array-module code on numpy (its faiss route splits clusters differently).
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    x = _data(17, n=4000, dim=16)
    np.testing.assert_allclose(kmeans(x, 32, iters=5, device="cuda"), kmeans(x, 32, iters=5, device="cpu"),
                               rtol=1e-4, atol=1e-4)
    codebooks = pq_train(x, 4, iters=5, device="cpu")
    codes = pq_encode(x, codebooks, device="cuda")
    assert np.mean(codes == pq_encode(x, codebooks, device="cpu")) > 0.999
    queries = x[:10]
    np.testing.assert_allclose(pq_distances(queries, codes, codebooks, "l2", device="cuda"),
                               pq_distances(queries, codes, codebooks, "l2", device="cpu"), rtol=1e-4, atol=1e-4)
