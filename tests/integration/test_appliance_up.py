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


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


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
        # 1 query node + 2 executors, each a gunicorn master with a worker (the insert's event may also have
        # started an indexer, which exits by itself once idle)
        masters = [pid for pid in children_of(proc.pid) if b"indexer" not in cmdline(pid)]
        assert len(masters) == 3, [cmdline(pid) for pid in children_of(proc.pid)]
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


# Harmless lines that read as errors, filtered where they arise (appliance/web.py: faiss's loader;
# appliance/fleet.py: lance's fork warning, and gunicorn's control socket, turned off).
NOISE = {
    "faiss's loader": r"faiss with \w+ support|Could not load library with",
    "lance's fork warning": r"lance is not fork-safe",
    "gunicorn's control socket": r"Control socket listening at",
}


def test_up_starts_quietly(tmp_path) -> None:
    """At the default log level, through start-up, a search and the indexer's first build (which loads
    faiss), stderr has none of the known harmless warnings, and no gunicorn control socket is made."""
    import re

    import numpy as np
    import requests

    port = free_port_block(3)
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = {**os.environ, "APPLIANCE_PORT": str(port), "APPLIANCE_EXECUTOR_BASE_PORT": str(port + 1),
           "APPLIANCE_DATA": str(tmp_path / "data"), "APPLIANCE_LOG_LEVEL": "info",
           "APPLIANCE_API_KEY": "sk-quiet-start-test", "APPLIANCE_INDEXER_MIN_ROWS": "256",
           "XDG_RUNTIME_DIR": str(xdg), "HOME": str(tmp_path / "home")}
    stderr = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "up"], env=env, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    try:
        read_until(proc, "Ctrl-C stops the fleet", timeout=120)
        session = requests.Session()
        session.headers["x-api-key"] = "sk-quiet-start-test"
        url = f"http://127.0.0.1:{port}/api/v1/tables"
        assert session.post(url, json={"name": "quiet", "dimension": 8, "metric": "l2"}).status_code == 201
        vectors = np.random.default_rng(3).normal(size=(400, 8)).round(4)
        resp = session.post(f"{url}/quiet/rows", json={"rows": [{"vector": v.tolist()} for v in vectors]})
        assert resp.status_code == 200, resp.text
        deadline = time.monotonic() + 240
        while session.get(f"{url}/quiet/index").json().get("index") is None:
            assert time.monotonic() < deadline, "the indexer built no index in 240 s"
            time.sleep(0.5)
        assert session.post(f"{url}/quiet/search", json={"vector": vectors[0].tolist(), "k": 1}).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr.close()
    log = (tmp_path / "stderr.log").read_text()
    assert "indexer" in log  # the indexer ran, with its log here
    found = {what: [line for line in log.splitlines() if re.search(pattern, line)] for what, pattern in NOISE.items()}
    assert {what: lines for what, lines in found.items() if lines} == {}
    assert not list(xdg.iterdir()) and not (tmp_path / "home" / ".gunicorn").exists()


def test_faiss_loader_lines_stay_out_of_the_log() -> None:
    """Where faiss is first imported after a process set up its log (today the nodes import it before),
    its loader's INFO lines are still kept out, and the appliance's own INFO lines are not."""
    import re

    code = ("import logging, sys; from appliance.web import configure_logging; assert 'faiss' not in sys.modules; "
            "configure_logging('info'); import faiss; logging.getLogger('appliance').info('kept')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "kept" in done.stderr
    assert not re.search(NOISE["faiss's loader"], done.stderr), done.stderr


def test_a_second_fleet_on_a_served_port_is_refused(tmp_path) -> None:
    """`appliance up` on the port of a running fleet exits 1 naming that fleet, and leaves it serving: even in
    the moment the first fleet's query node is down and its port free (the supervisor restarting it), which
    no check of the port can see. Without the fleet's port lock, the second fleet's query node would take
    the port beside the first's (both bind it with SO_REUSEPORT) and share its members file."""
    import requests
    from conftest import start_fleet

    fleet = start_fleet(tmp_path / "first", tmp_path / "logs", executors=1)
    try:
        port = fleet.settings.port
        os.killpg(fleet.query.process.pid, signal.SIGKILL)  # the query node dies; a supervisor would restart it
        fleet.query.process.wait()
        other = free_port_block(1)
        env = {**os.environ, "APPLIANCE_PORT": str(port), "APPLIANCE_EXECUTORS": "1",
               "APPLIANCE_EXECUTOR_BASE_PORT": str(other), "APPLIANCE_DATA": str(tmp_path / "second"),
               "APPLIANCE_LOG_LEVEL": "warning"}
        second = subprocess.run([sys.executable, "-m", "appliance.cli", "up"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 1, second
        assert (f"error: port {port} is served by another fleet on this machine (appliance up, pid {os.getpid()};"
                in second.stderr), second.stderr
        fleet._spawn(fleet.query)  # the restart: the port is still this fleet's
        fleet.wait_ready(120)
        resp = requests.get(f"{fleet.url}/api/v1/tables", headers={"x-api-key": fleet.api_key}, timeout=60)
        assert resp.status_code == 200 and resp.json() == {"tables": []}, resp.text
    finally:
        fleet.stop()
