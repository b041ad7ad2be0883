"""`python -m kernels info` runs in a fresh process and reports CPU, faiss, BLAS, CUDA and the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_info(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernels", "info", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env}, check=False)


def test_info_text():
    result = run_info(KERNELS_DEVICE="cpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for prefix in ("cpu:", "simd:", "numpy:", "faiss:", "blas:", "cuda:"):
        assert any(line.startswith(prefix) for line in lines), f"no {prefix!r} line in:\n{result.stdout}"
    assert "KERNELS_DEVICE=cpu -> cpu" in lines[-1]
    ops = {line.split()[1]: line.split()[2] for line in lines if line.startswith("op:")}
    assert ops["probe"] == "faiss" and ops["scan_lists/flat"] == "faiss" and ops["search_block"] == "numpy"
    forced = run_info(KERNELS_DEVICE="cpu", KERNELS_CPU="numpy").stdout.splitlines()
    assert {line.split()[2] for line in forced if line.startswith("op:")} == {"numpy"}


def test_info_json():
    result = run_info("--json", KERNELS_DEVICE="auto")
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["cpu"]["cores"] >= 1 and isinstance(details["cpu"]["simd_flags"], list)
    assert details["faiss"]["loaded"] and details["faiss"]["compile_options"]
    assert any(lib.get("user_api") == "blas" and lib["num_threads"] >= 1 for lib in details["blas"])
    assert details["device"]["KERNELS_DEVICE"] == "auto"
    assert details["backends"]["kmeans"]["backend"] in ("faiss", "cupy") and details["backends"]["probe"]["why"]
    assert details["device"]["resolved"] == ("cuda" if details["cuda"]["available"] else "cpu")


def test_info_reports_an_impossible_device_instead_of_failing():
    result = run_info("--json", KERNELS_DEVICE="cuda")
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    if not details["cuda"]["available"]:
        assert details["device"]["resolved"].startswith("error:")
