"""What the running process computes with: CPU and SIMD, the faiss build, BLAS and threads, CUDA.

`python -m kernels info` prints it (`--json` for a machine-readable dict). Every probe is best effort:
a library that is missing or too old to answer shows as a note, never as an error.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# x86 and ARM flags that decide which kernels run fast; /proc/cpuinfo lists dozens more.
SIMD_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx512_vpopcntdq", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16",
)


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info() -> dict[str, Any]:
    fields = _cpuinfo()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "model": fields.get("model name") or fields.get("Model") or platform.processor() or "unknown",
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "simd_flags": [flag for flag in SIMD_FLAGS if flag in flags],
    }
    try:  # numpy >= 2: the SIMD targets numpy was built for and the ones it dispatches to on this CPU
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__

        info["numpy_simd_baseline"] = list(__cpu_baseline__)
        info["numpy_simd_dispatch"] = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    except ImportError:
        pass
    return info


def faiss_info() -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"loaded": False, "note": "faiss is not installed"}
    info: dict[str, Any] = {"loaded": True, "version": getattr(faiss, "__version__", "unknown")}
    try:
        info["compile_options"] = faiss.get_compile_options().strip()
    except AttributeError:
        pass
    try:  # faiss >= 1.12 builds all SIMD levels into one library and dispatches at run time
        info["simd_level"] = faiss.SIMDConfig.get_level_name()
    except AttributeError:  # older wheels load one of several libraries instead
        import sys

        modules = sorted(name for name in sys.modules if name.startswith("faiss.swigfaiss"))
        info["simd_level"] = modules[-1].rpartition("_")[2] if modules else "unknown"
    try:
        info["omp_max_threads"] = faiss.omp_get_max_threads()
    except AttributeError:
        pass
    return info


def blas_info() -> list[dict[str, Any]]:
    """BLAS and OpenMP libraries loaded in this process (numpy's and faiss's), with their thread counts."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl is not installed"}]
    keep = ("user_api", "internal_api", "version", "num_threads", "architecture", "threading_layer")
    libs = []
    for lib in threadpool_info():
        path = Path(lib["filepath"])
        # Wheels vendor their libraries next to the package ("numpy.libs", "faiss_cpu.libs"): that says whose.
        owner = path.parent.name.removesuffix(".libs").split("_")[0] if path.parent.name.endswith(".libs") else ""
        libs.append({**{key: lib[key] for key in keep if lib.get(key) is not None}, "library": path.name,
                     "used_by": owner or "process"})
    return libs


def cuda_info() -> dict[str, Any]:
    from kernels.backend import cupy_module

    cupy = cupy_module()
    if cupy is None:
        try:
            import cupy as _  # noqa: F401
        except ImportError:
            return {"available": False, "note": "cupy is not installed (pip install .[gpu])"}
        return {"available": False, "note": "cupy is installed but sees no CUDA device"}
    devices = []
    for number in range(cupy.cuda.runtime.getDeviceCount()):
        props = cupy.cuda.runtime.getDeviceProperties(number)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        devices.append({"id": number, "name": name, "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                        "compute_capability": f"{props['major']}.{props['minor']}"})
    return {"available": True, "cupy": cupy.__version__, "devices": devices}


def device_info() -> dict[str, Any]:
    from kernels.backend import resolve

    requested = os.environ.get("KERNELS_DEVICE") or "auto"
    try:
        resolved = resolve()
    except (ValueError, RuntimeError) as error:
        resolved = f"error: {error}"
    return {"KERNELS_DEVICE": requested, "resolved": resolved}


def backends_info() -> dict[str, dict[str, str]]:
    """op -> the backend it runs on in this process (CPU: faiss or numpy; with a GPU, the device= ops on
    cupy) and why that backend was chosen."""
    from kernels import cpu_faiss
    from kernels.backend import resolve

    try:
        gpu = resolve() == "cuda"
    except (ValueError, RuntimeError):
        gpu = False
    on_device = {"kmeans", "assign", "pq_train", "pq_encode", "pq_distances", "search_block", "topk/merge_topk"}
    return {op: {"backend": "cupy" if gpu and op in on_device else backend, "why": cpu_faiss.OPS[op][1]}
            for op, backend in cpu_faiss.backends().items()}


def collect() -> dict[str, Any]:
    import numpy as np

    # faiss is imported before BLAS is listed, so its own OpenBLAS and OpenMP runtime show up too.
    faiss = faiss_info()
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": cpu_info(),
        "faiss": faiss,
        "blas": blas_info(),
        "cuda": cuda_info(),
        "device": device_info(),
        "backends": backends_info(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def render(info: dict[str, Any]) -> str:
    cpu, faiss, cuda, device = info["cpu"], info["faiss"], info["cuda"], info["device"]
    lines = [
        f"cpu:     {cpu['model']} ({cpu['arch']}), {cpu['cores_usable']} of {cpu['cores']} cores usable",
        f"simd:    {' '.join(cpu['simd_flags']) or 'none found'}",
    ]
    if "numpy_simd_baseline" in cpu:
        lines.append(f"numpy:   {info['numpy']}, SIMD baseline {' '.join(cpu['numpy_simd_baseline']) or '-'}, "
                     f"dispatch {' '.join(cpu['numpy_simd_dispatch']) or '-'}")
    else:
        lines.append(f"numpy:   {info['numpy']}")
    if faiss["loaded"]:
        lines.append(f"faiss:   {faiss['version']}, SIMD level {faiss.get('simd_level', '?')}, "
                     f"compile options '{faiss.get('compile_options', '?')}', "
                     f"{faiss.get('omp_max_threads', '?')} OpenMP threads")
    else:
        lines.append(f"faiss:   {faiss['note']}")
    for lib in info["blas"]:
        if "note" in lib:
            lines.append(f"blas:    {lib['note']}")
            continue
        detail = ", ".join(f"{key} {lib[key]}" for key in ("architecture", "threading_layer") if key in lib)
        name = " ".join(filter(None, (lib["internal_api"], lib.get("version"))))
        lines.append(f"{lib['user_api'] + ':':8} {name} for {lib['used_by']} ({lib['library']}), "
                     f"{lib['num_threads']} threads" + (f", {detail}" if detail else ""))
    if cuda["available"]:
        for gpu in cuda["devices"]:
            lines.append(f"cuda:    device {gpu['id']}: {gpu['name']}, {gpu['memory_gib']} GiB, "
                         f"compute {gpu['compute_capability']} (cupy {cuda['cupy']})")
    else:
        lines.append(f"cuda:    not available: {cuda['note']}")
    width = max(map(len, info["backends"]), default=0)
    for op, choice in info["backends"].items():
        lines.append(f"op:      {op:{width}}  {choice['backend']:5}  {choice['why']}")
    lines.append(f"device:  KERNELS_DEVICE={device['KERNELS_DEVICE']} -> {device['resolved']}")
    return "\n".join(lines)
