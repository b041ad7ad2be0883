"""`appliance up` as a user runs it: prints a ready banner whose curl commands work, stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port_block


def read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not printed; got:\n{''.join(seen)}")


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def children_of(pid: int) -> list[int]:
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == str(pid):
            kids.append(int(status.parent.name))
    return kids


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_up_prints_working_curl_and_stops_on_ctrl_c(tmp_path) -> None:
    port = free_port_block(3)
    env = {**os.environ, "APPLIANCE_PORT": str(port), "APPLIANCE_EXECUTOR_BASE_PORT": str(port + 1),
           "APPLIANCE_DATA": str(tmp_path / "data"), "APPLIANCE_LOG_LEVEL": "warning"}
    env.pop("APPLIANCE_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        banner = read_until(proc, "Ctrl-C stops the fleet", timeout=60)
        key = (tmp_path / "data" / "_appliance" / "api_key").read_text().strip()
        assert f"API key: {key}" in banner and f"http://127.0.0.1:{port}" in banner
        assert f"Console: http://127.0.0.1:{port}/ " in banner and f"http://127.0.0.1:{port}/docs" in banner
        curls = [line.strip() for line in banner.splitlines() if line.strip().startswith("curl ")]
        assert len(curls) == 3
        outputs = [subprocess.run(["bash", "-c", c], capture_output=True, text=True, check=True).stdout
                   for c in curls]
        assert json.loads(outputs[0])["name"] == "demo"
        assert json.loads(outputs[1])["inserted"] == 2
        assert json.loads(outputs[2])["results"][0]["title"] == "east"
        masters = children_of(proc.pid)
        assert len(masters) == 3  # 1 query node + 2 executors, each a gunicorn master with a worker
        node_pids = masters + [w for m in masters for w in children_of(m)]
        assert len(node_pids) == 6
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        rest = proc.stdout.read()
        assert "stopped" in rest
        time.sleep(0.5)
        assert pids_alive(node_pids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
