"""The command line and environment of every process the appliance starts, built in one place.

A query node or an executor is gunicorn serving the role's Flask app; an indexer is `appliance indexer`.
`appliance up`'s supervisor (appliance/fleet.py) and its indexer pool (appliance/indexer/pool.py) start
them with `node` and `indexer`, and `appliance serve ROLE` (what a cloud host's systemd unit, ansible's
`appliance-ctl` and a gunicorn master re-executed for an upgrade run) execs the same `node` line, so a node
runs with the same flags however it was started.

A process learns everything from its settings, handed over as `APPLIANCE_*` environment variables
(`Settings.to_env`), its own address included: the launcher serves a node on its settings' `host` and
`port`, and the node reads them back from its settings (an executor names its cache folder and binds its
Flight server by them). Nothing parses a process's command line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from appliance import gunicorn_hooks
from appliance.config import Settings
from appliance.node_state import shm_dir

QUERY_APP = "appliance.query.app:create_app()"
EXECUTOR_APP = "appliance.executor.app:create_app()"
APPS = {"query": QUERY_APP, "executor": EXECUTOR_APP}
# Seconds gunicorn lets a stopping node's workers finish the requests they hold (SIGTERM) before it kills them.
GRACEFUL_TIMEOUT = 10


@dataclass(frozen=True)
class Command:
    """What to run: the argument vector (argv[0] the program) and the whole environment."""

    argv: list[str]
    env: dict[str, str]


def node(settings: Settings, role: str, name: str = "") -> Command:
    """gunicorn serving `role` ("query" or "executor") on `settings.host`:`settings.port`, named
    `appliance-<name>` (default: the role) in its process title and logs."""
    query = role == "query"
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", bind_address(settings.host, settings.port),
        "--workers", str(settings.query_workers if query else 1),
        "--worker-class", gunicorn_hooks.WORKER_CLASS,
        "--threads", str(settings.query_threads if query else settings.executor_threads),
        *gunicorn_node_args(),
        "--timeout", str(int(settings.request_timeout) + 30),
        "--keep-alive", str(settings.keep_alive),
        "--graceful-timeout", str(GRACEFUL_TIMEOUT),
        "--log-level", settings.log_level,
        "--name", f"appliance-{name or role}",
        APPS[role],
    ]
    return Command(argv, environment(settings, settings.kernel_threads))


def indexer(settings: Settings) -> Command:
    """One indexer (`appliance indexer`), its BLAS, OpenMP and Lance threads held to `indexer_threads`."""
    return Command([sys.executable, "-m", "appliance.cli", "indexer"],
                   environment(settings, settings.indexer_threads, lance=True))


def environment(settings: Settings, threads: int, lance: bool = False) -> dict[str, str]:
    """This process's environment with `settings` in it, and the compute libraries' thread counts (read when
    they load, before the process can cap them itself: kernels.set_thread_budget)."""
    counts = {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    if lance:
        counts["LANCE_CPU_THREADS"] = str(threads)
    return {**os.environ, **settings.to_env(), **counts}


def gunicorn_node_args() -> list[str]:
    """gunicorn flags of every node: the hooks that make the state a node's workers share
    (appliance/gunicorn_hooks.py; they also bind a query node's port with SO_REUSEPORT, so several query
    nodes share it, and re-execute a node in place), and the workers' heartbeat file in /dev/shm (memory)
    rather than the temp folder on disk: gunicorn touches it every second or so per worker, and on disk
    that `os.utime` was 18% of an executor's CPU samples (about 12% of a node's CPU saved); where /dev/shm
    is absent, the temp folder as before."""
    # --no-control-socket: gunicorn 27's masters all default to one control socket path
    # ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl), each node announcing it and taking it from the
    # last; nothing here uses it (signals drive the nodes), so none.
    return ["-c", "python:appliance.gunicorn_hooks", "--worker-tmp-dir", shm_dir(), "--no-control-socket"]


def bind_address(host: str, port: int) -> str:
    """gunicorn's `--bind` of host and port (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
