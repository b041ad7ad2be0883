"""Where a kernel runs: the CPU (numpy) or a CUDA GPU (cupy), behind one array-module interface.

Every kernel is written once against an array module `xp` that is either numpy or cupy, so the CUDA path
is the same code as the CPU one and its logic is exercised by the CPU test suite; only the module the
arrays live in changes. Callers pass and receive numpy arrays; `device=` picks where the work happens.

`KERNELS_DEVICE` (`auto`, `cpu` or `cuda`) sets the default for the process: `auto` uses a GPU when cupy
is installed and sees one, so an indexer host with a GPU uses it and every other host runs on the CPU.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

import numpy as np

DEVICES = ("auto", "cpu", "cuda")


@functools.cache
def cupy_module() -> ModuleType | None:
    """cupy, when it is installed and a CUDA device is visible; None otherwise."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # cupy raises its own CUDARuntimeError when no driver is loaded
        return None
    return cupy


def cuda_available() -> bool:
    return cupy_module() is not None


def resolve(device: str | None = None) -> str:
    """The concrete device ('cpu' or 'cuda') for a request of `device` (default: $KERNELS_DEVICE or auto)."""
    choice = (device or os.environ.get("KERNELS_DEVICE") or "auto").lower()
    if choice not in DEVICES:
        raise ValueError(f"unknown kernels device {choice!r}; expected one of {', '.join(DEVICES)}")
    if choice == "auto":
        return "cuda" if cuda_available() else "cpu"
    if choice == "cuda" and not cuda_available():
        raise RuntimeError("device 'cuda' was asked for, but cupy is not installed or sees no CUDA device")
    return choice


def array_module(device: str) -> ModuleType:
    """numpy for 'cpu', cupy for 'cuda' (after `resolve`)."""
    if device == "cpu":
        return np
    module = cupy_module()
    if module is None:
        raise RuntimeError("cupy is not available")
    return module


def module_of(array: Any) -> ModuleType:
    """The array module an array belongs to, so helpers work on either without being told."""
    module = type(array).__module__.split(".")[0]
    return array_module("cuda") if module == "cupy" else np


def to_device(xp: ModuleType, array: Any, dtype: Any = None) -> Any:
    return xp.asarray(array, dtype=dtype)


def to_host(array: Any) -> np.ndarray:
    """A numpy array, copying from the GPU when needed."""
    if type(array).__module__.split(".")[0] == "cupy":
        return array.get()
    return np.asarray(array)
