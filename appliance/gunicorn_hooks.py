"""gunicorn configuration hooks of every node the launcher starts (`-c python:appliance.gunicorn_hooks`).

The master makes the state its workers share (appliance/node_state.py) before it forks them, so a node
with several workers drains as one and its workers see each other's writes at once.

A query node's master binds its port with SO_REUSEPORT, so several query nodes on one machine share it
(setting `query_nodes`; the kernel spreads new connections over their sockets). One socket per node, made
by the master and shared by its workers, not gunicorn's `--reuse-port` (one socket per worker): a worker's
own socket would drop the connections queued on it when that worker stops, and a re-executed master would
have no socket to inherit.

An upgrade in place without a refused connection (`appliance-ctl reload` of ansible/, on one machine):
SIGUSR2 to the master makes gunicorn fork and exec a new master that inherits the listening socket, so the
port never closes and connections keep queueing on it. These hooks make that new master
- run the release the link `$APPLIANCE_RELEASE_LINK` points to now (`appliance serve ROLE` of that
  release, which reads the settings again: `$APPLIANCE_ENV_FILE`'s values replace the old ones), and
- take connections only once its app is ready (`/readyz` 200, at most `startup_timeout` seconds: its
  workers wait before they accept), then SIGTERM the old master, whose workers stop accepting, finish the
  requests they hold and answer a kept-alive connection's next request with `Connection: close`.
Both masters accept from the same socket meanwhile, so no client sees a refusal, a reset or a 503.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import time
from pathlib import Path
from typing import Any

from gunicorn import sock, util

from appliance import node_state, one_write

RELEASE_LINK_ENV = "APPLIANCE_RELEASE_LINK"  # e.g. /opt/appliance/current -> releases/<version>
ENV_FILE_ENV = "APPLIANCE_ENV_FILE"  # KEY=VALUE lines (shell quoting), as ansible's appliance.env
READY_POLL = 0.2
# the gunicorn worker class of every node (the launchers pass it as --worker-class): gthread, with each
# keep-alive connection served on one thread (appliance/worker.py)
WORKER_CLASS = "appliance.worker.PinnedThreadWorker"

_server: Any = None  # the arbiter, as this process (the master, or a worker forked from it) last saw it


def on_starting(server: Any) -> None:
    global _server
    _server = server
    node_state.create_shared(server.cfg.workers)
    inherited = "GUNICORN_FD" in os.environ or "LISTEN_FDS" in os.environ  # re-executed, or systemd's
    tcp = all(isinstance(addr, tuple) for addr in server.cfg.address)
    if _is_query(server.START_CTX["args"]) and tcp and not inherited and not server.LISTENERS:
        server.LISTENERS = [_shared_port_socket(addr, server.cfg, server.log) for addr in server.cfg.address]
    one_write.install()  # headers leave with the first body bytes: one socket write per answer


def pre_exec(server: Any) -> None:
    """In the child about to become the new master (SIGUSR2): run the release the link names now."""
    link = os.environ.get(RELEASE_LINK_ENV)
    if link:
        command = str(Path(os.path.realpath(link)) / "bin" / "appliance")  # resolved: a later switch moves nothing
        role = "query" if _is_query(server.START_CTX["args"]) else "executor"
        server.START_CTX[0] = command
        server.START_CTX["args"] = [command, "serve", role]
    env_file = os.environ.get(ENV_FILE_ENV)
    if env_file and os.path.exists(env_file):
        server.cfg.env_orig.update(read_env_file(env_file))


def post_worker_init(worker: Any) -> None:
    """A worker of a re-executed master: accept only once the app is ready, then retire the old master."""
    old = getattr(_server, "master_pid", 0)  # nonzero while the master that re-executed this one runs
    if not old:
        return
    from appliance.config import Settings

    deadline = time.monotonic() + Settings.load().startup_timeout
    client = worker.wsgi.test_client()
    while time.monotonic() < deadline and client.get("/readyz").status_code != 200:
        worker.notify()
        time.sleep(READY_POLL)
    if _is_gunicorn(old):
        try:
            os.kill(old, signal.SIGTERM)  # graceful: finishes its requests; the socket stays open here
        except ProcessLookupError:
            pass


def read_env_file(path: str) -> dict[str, str]:
    """`KEY=VALUE` lines with shell quoting (what `set -a; . FILE` and systemd's EnvironmentFile read)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and "=" in words[0]:
            key, _, value = words[0].partition("=")
            values[key] = value
    return values


def _is_query(args: list[Any]) -> bool:
    return any(str(a).startswith("appliance.query.app") for a in args)


def _shared_port_socket(addr: Any, cfg: Any, log: Any) -> Any:
    """gunicorn's listening socket of the TCP address `addr`, bound with SO_REUSEPORT."""
    base = sock.TCP6Socket if util.is_ipv6(addr[0]) else sock.TCPSocket

    class SharedPort(base):  # type: ignore[misc, valid-type]
        def set_options(self, s: socket.socket, bound: bool = False) -> socket.socket:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            return super().set_options(s, bound=bound)

    return SharedPort(addr, cfg, log)


def _is_gunicorn(pid: int) -> bool:
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
