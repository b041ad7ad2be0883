"""appliance/launch.py: `appliance up`'s supervisor and `appliance serve` start a node with the same gunicorn
line and settings, the node's own address among them; and appliance/fleet.py's port lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port_block

from appliance import launch
from appliance.config import Settings
from appliance.fleet import Fleet, FleetError, lock_port

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def exec_of_serve(role: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of the process `appliance serve ROLE` becomes (read from /proc once
    it has exec'd gunicorn), started with `env`."""
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", role], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
            if b"gunicorn" in argv:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "appliance serve did not exec gunicorn"
            time.sleep(0.05)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")[:-1]
        return [a.decode() for a in argv], dict(e.decode().split("=", 1) for e in environ)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
        proc.stdout.close()


def named(argv: list[str]) -> list[str]:
    """argv with the value of --name left out (the supervisor names each node: query-0, executor-1)."""
    at = argv.index("--name")
    assert argv[at + 1].startswith("appliance-")
    return argv[:at + 1] + argv[at + 2:]


def settings_of(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("APPLIANCE_") or k in THREAD_VARS}


@pytest.mark.parametrize("role", ["query", "executor"])
def test_up_and_serve_start_a_node_alike(tmp_path: Path, role: str) -> None:
    base = free_port_block(3)
    fleet = Fleet(Settings.load(env={}).replace(data=str(tmp_path / "data"), port=base, executor_base_port=base + 1,
                                                executors=2, kernel_threads=3, log_level="warning"))
    node = fleet.query if role == "query" else fleet.executors[1]
    up = fleet.command(node)
    # a node serves on its own address, and knows it from its settings (the executors' too: no argv parsing)
    assert up.argv[up.argv.index("--bind") + 1] == f"127.0.0.1:{node.port}"
    assert (up.env["APPLIANCE_HOST"], up.env["APPLIANCE_PORT"]) == ("127.0.0.1", str(node.port))
    assert all(up.env[var] == "3" for var in THREAD_VARS)
    for flag in ("--graceful-timeout", "--log-level", "--name", "--worker-class", "--keep-alive", "--timeout"):
        assert flag in up.argv
    # what a cloud host runs: `appliance serve ROLE` with the node's settings in its environment
    argv, env = exec_of_serve(role, {**os.environ, **settings_of(up.env)})
    assert named(argv) == named(up.argv)
    assert settings_of(env) == settings_of(up.env)


def test_an_indexer_gets_its_thread_budget() -> None:
    cmd = launch.indexer(Settings.load(env={}).replace(indexer_threads=2))
    assert cmd.argv[-2:] == ["appliance.cli", "indexer"]
    assert {cmd.env[v] for v in (*THREAD_VARS, "LANCE_CPU_THREADS")} == {"2"}


def test_bind_address_brackets_ipv6() -> None:
    assert launch.bind_address("::1", 8080) == "[::1]:8080"
    assert launch.bind_address("0.0.0.0", 8080) == "0.0.0.0:8080"


def test_one_fleet_holds_a_port() -> None:
    port = free_port_block(1)
    held = lock_port(port)
    try:
        with pytest.raises(FleetError, match=rf"port {port} is served by another fleet .*pid {os.getpid()}"):
            lock_port(port)
        # a child started while the lock is held (as the fleet's nodes are) does not keep it
        child = subprocess.Popen(["sleep", "60"])
    finally:
        held.close()
    try:
        lock_port(port).close()
    finally:
        child.kill()
        child.wait()
