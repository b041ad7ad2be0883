"""Sends a plan's tasks to executors and merges what comes back.

Tasks are grouped per executor with bounded-load consistent hashing, and each executor gets one HTTP
request for all its tasks (sent concurrently over pooled keep-alive connections). An executor that
fails is marked down and its tasks go to the next live member of the ring, so a query survives the death
of any executor as long as one is left.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import kernels
from appliance.errors import InvalidInput, Unavailable
from appliance.planner import wire
from appliance.planner.plan import SearchPlan, Task
from appliance.routing.connections import ConnectionPool
from appliance.routing.membership import Membership
from appliance.routing.ring import NoLiveNodes

INTERNAL_TOKEN_HEADER = "x-appliance-token"
log = logging.getLogger("appliance.dispatch")


class ExecutorFailed(Exception):
    """An executor could not run its batch (connection refused, timeout, 5xx): retry elsewhere."""


class Dispatcher:
    def __init__(
        self, membership: Membership, token: str, timeout: float, eps: float, max_parallel: int = 32
    ) -> None:
        self._membership = membership
        self._token = token
        self._timeout = timeout
        self._eps = eps
        self._connections = ConnectionPool(timeout, max_idle=max_parallel)
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="dispatch")

    # metrics hook (appliance/metrics.py): called with (seconds, ok) once per executor batch
    on_batch: Callable[[float, bool], None] | None = None

    def _observe(self, started: float, ok: bool) -> None:
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started, ok)

    def assignment(self, plan: SearchPlan) -> dict[str, list[Task]]:
        """Which executor runs which task, given the members currently believed alive."""
        return self._assign(plan.tasks, self._membership.down())

    def _assign(self, tasks: list[Task], exclude: set[str]) -> dict[str, list[Task]]:
        by_key = {t.key: t for t in tasks}
        try:
            groups = self._membership.ring.assign(list(by_key), eps=self._eps, exclude=exclude)
        except NoLiveNodes as exc:
            raise Unavailable("no executor is available to run the query") from exc
        return {node: [by_key[k] for k in keys] for node, keys in groups.items()}

    def search(self, plan: SearchPlan, queries: np.ndarray, request_id: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Merged top `fetch_k` (row ids, distances) of every task of the plan, padded with kernels.NO_ID."""
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        pending = list(plan.tasks)
        failed: set[str] = set()
        while pending:
            groups = self._assign(pending, self._membership.down() | failed)
            sends = {node: functools.partial(self._send, node, plan, tasks, queries, request_id)
                     for node, tasks in groups.items()}
            # the first executor's request goes from this thread, the others from the pool meanwhile: one
            # thread handoff less on every search
            futures = {node: self._pool.submit(send) for node, send in list(sends.items())[1:]}
            pending = []
            for node, send in sends.items():
                try:
                    parts.append(futures[node].result() if node in futures else send())
                except ExecutorFailed as exc:
                    log.warning("executor %s failed (%s); rerouting %d tasks", node, exc, len(groups[node]))
                    failed.add(node)
                    self._membership.mark_down(node, str(exc))
                    pending.extend(groups[node])
        if not parts:
            return (np.full((len(queries), plan.fetch_k), kernels.NO_ID, np.uint64),
                    np.full((len(queries), plan.fetch_k), np.inf, np.float32))
        return kernels.merge_topk(parts, plan.fetch_k)

    def _send(
        self, node: str, plan: SearchPlan, tasks: list[Task], queries: np.ndarray, request_id: str
    ) -> tuple[np.ndarray, np.ndarray]:
        body = wire.encode(
            {"tasks": [t.to_json() for t in tasks], "k": plan.fetch_k, "metric": plan.metric, "filter": plan.filter},
            [queries],
        )
        headers = {INTERNAL_TOKEN_HEADER: self._token, "content-type": wire.CONTENT_TYPE,
                   "x-request-id": request_id}
        started = time.perf_counter()
        try:
            status, content = self._connections.request("POST", node, "/internal/v1/search", body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._observe(started, False)
            raise ExecutorFailed(type(exc).__name__) from exc
        self._observe(started, status < 400)
        if status >= 500 or status in (401, 403):
            # 401/403 means this executor has another internal token: a misconfigured member, not bad input.
            raise ExecutorFailed(f"HTTP {status}")
        if status >= 400:
            raise InvalidInput(f"executor rejected the task batch: {_error_text(content)}")
        _, (ids, dists) = wire.decode(content)
        return ids, dists


def _error_text(content: bytes) -> str:
    try:
        doc = json.loads(content)
        return f"{doc.get('error')}: {doc.get('detail', '')}".rstrip(": ")
    except (ValueError, AttributeError):
        return content[:200].decode("utf-8", "replace")
