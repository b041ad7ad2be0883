"""Drain: take a node out of service without failing a request.

`POST /admin/drain` makes a node (query node or executor) stop taking new work: every request except
health, readiness and admin answers 503 `{"code": "draining"}`, and `/readyz` answers 503 with
`"draining": true`, so a load balancer stops sending it clients and the query nodes' membership stops
routing tasks to it (a task that still reaches it in between gets the 503 and is rerouted by the
dispatcher). The call then waits, up to `?wait=SECONDS` (default 30), until the requests already running
have finished, and says whether the node is idle. `POST /admin/undrain` puts the node back; `GET
/admin/drain` reports the state. A node always starts undrained: the state lives in its processes' memory.

`install_common` (appliance/web.py) installs the gate on every app; each app registers `drain_api` with its
own admin check (executors: the internal token; query nodes: `query.auth.require_admin`). A node with
several gunicorn workers drains as one: the flag and the in-flight counts are shared by its workers
(appliance/node_state.py), so any worker may take the drain call and report the whole node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, g, request

from appliance import __version__
from appliance.errors import ApplianceError
from appliance.node_state import NodeState, node_state

EXTENSION = "appliance.drain"
# Paths that keep answering while drained and are not counted as work: probes and the operator's tools.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/cache/stats"})
EXEMPT_PREFIXES = ("/admin/",)
DEFAULT_WAIT = 30.0


class Draining(ApplianceError):
    status = 503
    code = "draining"


class DrainState:
    """The drain flag and the count of requests in flight, changed under one lock, so a request either
    starts before the drain (and is waited for) or is refused: none slips in between.

    Both live in the node's shared state (appliance/node_state.py), so every gunicorn worker of a node
    agrees: a drain asked of one worker drains them all, and the in-flight count is all workers' (a
    worker that died is not waited for). Without a state made by the gunicorn master, this process's own."""

    POLL = 0.01  # seconds between looks at the other workers' counts while waiting for idle

    def __init__(self, node: NodeState | None = None) -> None:
        self._node = node or node_state()
        self._cond = threading.Condition()  # wakes this process's waiters at once; others are polled

    @property
    def draining(self) -> bool:
        return self._node.draining()[0]

    def enter(self) -> bool:
        """Count one request in; False (not counted) while draining."""
        with self._node.locked():
            if self._node.draining()[0]:
                return False
            self._node.add_in_flight(1)
            return True

    def leave(self) -> None:
        with self._node.locked():
            self._node.add_in_flight(-1)
        with self._cond:
            self._cond.notify_all()

    def drain(self) -> None:
        with self._node.locked():
            self._node.set_draining(True)

    def undrain(self) -> None:
        with self._node.locked():
            self._node.set_draining(False)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no counted request runs in any worker (at most `timeout` seconds); True when idle."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._node.in_flight() > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, self.POLL if self._node.shared else left))
            return True

    def describe(self) -> dict[str, Any]:
        draining, since = self._node.draining()
        in_flight = self._node.in_flight()
        return {"draining": draining, "in_flight": in_flight, "idle": in_flight == 0,
                "draining_since": since or None, "version": __version__}


def exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


def install_gate(app: Flask, role: str) -> DrainState:
    """Refuse new work while drained and count the requests in flight. Installed by `install_common`
    before any other hook, so a refused request never reaches authentication or a view."""
    state = DrainState()
    app.extensions[EXTENSION] = state

    @app.before_request
    def _gate() -> Response | None:
        if request.path == "/readyz" and state.draining:
            return _json({"ready": False, "draining": True, "role": role, "problems": ["draining"],
                          "version": __version__}, 503)
        if exempt(request.path):
            return None
        if not state.enter():
            raise Draining("this node is draining; send the request to another node")
        g.drain_counted = True
        return None

    @app.teardown_request
    def _done(_exc: BaseException | None) -> None:
        if g.pop("drain_counted", False):
            state.leave()

    return state


def drain_state(app: Flask) -> DrainState:
    return app.extensions[EXTENSION]


def drain_api(app: Flask, authorize: Callable[[], None]) -> Blueprint:
    """`/admin/drain` and `/admin/undrain` of this app; `authorize` raises when the caller may not."""
    state = drain_state(app)
    bp = Blueprint("drain", __name__)

    @bp.get("/admin/drain")
    def show() -> Response:
        authorize()
        return _json(state.describe())

    @bp.post("/admin/drain")
    def drain() -> Response:
        authorize()
        try:
            wait = float(request.args.get("wait", DEFAULT_WAIT))
        except ValueError as exc:
            raise ApplianceError("wait must be a number of seconds") from exc
        state.drain()
        idle = state.wait_idle(min(wait, 600.0))
        return _json(state.describe(), 200 if idle else 202)

    @bp.post("/admin/undrain")
    def undrain() -> Response:
        authorize()
        state.undrain()
        return _json(state.describe())

    return bp


def _json(body: object, status: int = 200) -> Response:
    # Not web.json_response: web.py imports this module.
    return Response(orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE), status=status,
                    mimetype="application/json")
