"""Starts and supervises a whole fleet on one machine: the embedded default behind `appliance up`.

Every node is a real gunicorn process serving the same Flask apps the cloud fleets run; the supervisor
only starts them with the right settings, waits until the fleet can serve, restarts a node that dies,
and stops them all on Ctrl-C. Children run in their own sessions (so a terminal's Ctrl-C reaches only
the supervisor, which then stops them gracefully) and die with the supervisor if it is killed.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from appliance import launch
from appliance.config import Settings
from appliance.indexer.pool import IndexerPool
from appliance.node_state import shm_dir
from appliance.query.auth import resolve_api_key
from appliance.routing import handover
from appliance.routing.sources import write_members
from appliance.storage import BlobStore

_PR_SET_PDEATHSIG = 1
# lance warns "lance is not fork-safe" at every fork once imported (an at-fork hook). The launcher forks only
# to exec a node or an indexer at once (Popen with a preexec_fn), so the child inherits no lance state: noise.
warnings.filterwarnings("ignore", message="lance is not fork-safe", category=UserWarning)


@dataclass
class Node:
    role: str
    name: str
    port: int
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    restarts: int = 0
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class FleetError(RuntimeError):
    pass


class Fleet:
    """`query_nodes` query nodes (all on one port) and N executors on this machine, sharing one storage root."""

    def __init__(self, settings: Settings, log_dir: Path | None = None) -> None:
        token = settings.internal_token or secrets.token_urlsafe(24)
        api_key = resolve_api_key(settings, BlobStore(settings.storage_root()))
        self.executors = [
            Node("executor", f"executor-{i}", settings.executor_base_port + i)
            for i in range(settings.executors)
        ]
        self.settings = settings.replace(
            internal_token=token,
            api_key=api_key,
            executor_urls=",".join(n.url for n in self.executors),
            # the query nodes' executors: this file, rewritten as executors come and go (add/remove_executor)
            executor_members_file=settings.executor_members_file
            or str(fleet_dir(settings.port) / "executors.json"),
        )
        self.queries = [Node("query", f"query-{i}", settings.port, settings.host)
                        for i in range(max(1, settings.query_nodes))]
        self.query = self.queries[0]
        self._log_dir = log_dir
        self._stopping = threading.Event()
        self._port_lock: IO[str] | None = None
        self.indexers = IndexerPool(self.settings, log_dir, preexec=_die_with_parent)

    @property
    def nodes(self) -> list[Node]:
        return [*self.executors, *self.queries]

    @property
    def url(self) -> str:
        return self.query.url

    @property
    def api_key(self) -> str:
        return self.settings.api_key

    def start(self) -> None:
        if self.settings.executors < 1:
            raise FleetError("a fleet needs at least one executor (APPLIANCE_EXECUTORS >= 1)")
        self._port_lock = lock_port(self.settings.port)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        ports = [(node.host, node.port) for node in [*self.executors, self.query]]  # query nodes share one
        if self.settings.flight_port_offset:  # each executor's Flight server (appliance/executor/runner.py)
            ports += [(node.host, node.port + self.settings.flight_port_offset) for node in self.executors]
        if len(set(ports)) != len(ports) or max(port for _, port in ports) > 65535:
            raise FleetError(f"the fleet's ports collide or pass 65535: {sorted(p for _, p in ports)}; "
                             "change --port, --executor-base-port or --flight-port-offset")
        for host, port in ports[:len(self.executors) + 1]:  # not the Flight ports: an executor whose Flight port
            _check_port_free(host, port)                       # is taken serves over HTTP
        write_members(self.settings.executor_members_file, [n.url for n in self.executors])
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(self.settings.startup_timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise FleetError(f"{node.name} exited with code {node.process.returncode} during start-up"
                                     + self._log_hint(node))
            try:
                resp = requests.get(f"{self.url}/readyz", timeout=2)
                if resp.status_code == 200 and resp.json().get("executors_live") == len(self.executors):
                    return
                last = resp.text
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise FleetError(f"fleet not ready after {timeout:.0f}s: {last}")

    def add_executor(self, timeout: float = 120.0) -> Node:
        """Start one more executor and, once it is ready, name it in the members file: each query node
        prewarms it and then takes it into its ring (appliance/routing/handover.py)."""
        index = 1 + max((int(n.name.rsplit("-", 1)[1]) for n in self.executors), default=-1)
        node = Node("executor", f"executor-{index}", self.settings.executor_base_port + index)
        _check_port_free(node.host, node.port)
        self._spawn(node)
        try:
            handover.wait_ready(node.url, timeout)
        except TimeoutError:
            _signal_group(node, signal.SIGKILL)
            raise
        self.executors.append(node)
        write_members(self.settings.executor_members_file, [n.url for n in self.executors])
        return node

    def remove_executor(self, node: Node, timeout: float = 120.0) -> None:
        """Take an executor out without failing a search: out of the members file (the query nodes drop it
        from their rings), drained (its batches in flight finish), then stopped."""
        self.executors.remove(node)
        write_members(self.settings.executor_members_file, [n.url for n in self.executors])
        # several query nodes share one port: /admin/ring answers from one of them, so wait two of their
        # looks at the members file more before the drain (a batch that still comes is re-sent elsewhere)
        handover.retire(node.url, sorted({n.url for n in self.nodes if n.role == "query"}),
                        self.settings.admin_key or self.api_key, self.settings.internal_token, timeout,
                        settle=2 * self.settings.health_interval + 0.5)
        _signal_group(node, signal.SIGTERM)
        if node.process is not None:
            node.process.wait()
        if node.log:
            node.log.close()

    def supervise(self, poll: float = 0.5) -> None:
        """Restart nodes that die, and start an indexer when events wait, until stop() is called."""
        while not self._stopping.wait(poll):
            self.indexers.tend()
            for node in self.nodes:
                if not node.alive and not self._stopping.is_set():
                    code = node.process.returncode if node.process else None
                    print(f"[appliance] {node.name} exited (code {code}); restarting", file=sys.stderr,
                          flush=True)
                    node.restarts += 1
                    time.sleep(min(5.0, 0.5 * node.restarts))
                    self._spawn(node)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every node (gunicorn finishes in-flight requests), then SIGKILL what is left.

        Signals go to each node's process group, so a worker whose master already died goes too."""
        self._stopping.set()
        self.indexers.stop(grace)
        for node in self.nodes:
            _signal_group(node, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(node, signal.SIGKILL)
            node.process.wait()
            if node.log:
                node.log.close()
        if self._port_lock is not None:  # the port is free for another fleet once all of this one's nodes are gone
            self._port_lock.close()
            self._port_lock = None

    def command(self, node: Node) -> launch.Command:
        """How `node` is started: the launcher's gunicorn line of its role, with the fleet's settings served on
        the node's own address (which the node reads back from them)."""
        return launch.node(self.settings.replace(host=node.host, port=node.port), node.role, node.name)

    def _spawn(self, node: Node) -> None:
        cmd = self.command(node)
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            node.log = open(self._log_dir / f"{node.name}.log", "ab")  # noqa: SIM115 - closed in stop()
        node.process = subprocess.Popen(
            cmd.argv, env=cmd.env, stdout=node.log, stderr=subprocess.STDOUT if node.log else None,
            start_new_session=True, preexec_fn=_die_with_parent,
        )

    def _log_hint(self, node: Node) -> str:
        if self._log_dir is None:
            return ""
        return f" (log: {self._log_dir / (node.name + '.log')})"


def _signal_group(node: Node, sig: int) -> None:
    if node.process is None:
        return
    try:
        os.killpg(node.process.pid, sig)
    except ProcessLookupError:
        pass


def fleet_dir(port: int) -> Path:
    """The folder of the fleet serving `port` on this machine (memory where /dev/shm is): its members file and
    its port lock."""
    return Path(shm_dir()) / f"appliance-{port}"


def lock_port(port: int) -> IO[str]:
    """Hold `port` for this fleet until the returned file is closed, or raise FleetError naming the fleet that
    holds it. A query node binds its port with SO_REUSEPORT (appliance/gunicorn_hooks.py), so that the
    fleet's query nodes, and a node and its re-executed master, share it; a second fleet on the same port
    would share it too, silently, as would one started while a node of the first restarts. So `appliance
    up` takes this exclusive lock first, before its port check and its nodes; the kernel drops it when the
    supervisor exits, however it exits (the file is opened close-on-exec: no node inherits it)."""
    path = fleet_dir(port) / "fleet.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise FleetError(f"port {port} is served by another fleet on this machine (appliance up, pid {holder}; "
                         f"lock {path}); stop it, or pick another port with --port") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FleetError(f"port {host}:{port} is already in use; pick another with the flags") from exc


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the supervisor dies, so no node outlives `appliance up`."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
