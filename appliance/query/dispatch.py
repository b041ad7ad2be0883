"""Sends a plan's tasks to executors and merges what comes back.

Tasks are grouped per executor with bounded-load consistent hashing, and each executor gets one HTTP
request for all its tasks (sent concurrently over pooled keep-alive connections). An executor that
fails is marked down and its tasks go to the next live member of the ring, so a query survives the death
of any executor as long as one is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from requests.adapters import HTTPAdapter

import kernels
from appliance.errors import InvalidInput, Unavailable
from appliance.planner import wire
from appliance.planner.plan import SearchPlan, Task
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
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=max_parallel, pool_maxsize=max_parallel, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
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
            futures = {
                node: self._pool.submit(self._send, node, plan, tasks, queries, request_id)
                for node, tasks in groups.items()
            }
            pending = []
            for node, future in futures.items():
                try:
                    parts.append(future.result())
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
            resp = self._session.post(f"{node}/internal/v1/search", data=body, headers=headers,
                                      timeout=self._timeout)
        except requests.RequestException as exc:
            self._observe(started, False)
            raise ExecutorFailed(type(exc).__name__) from exc
        self._observe(started, resp.status_code < 400)
        if resp.status_code >= 500 or resp.status_code in (401, 403):
            # 401/403 means this executor has another internal token: a misconfigured member, not bad input.
            raise ExecutorFailed(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            detail = _error_text(resp)
            raise InvalidInput(f"executor rejected the task batch: {detail}")
        _, (ids, dists) = wire.decode(resp.content)
        return ids, dists


def _error_text(resp: requests.Response) -> str:
    try:
        doc = resp.json()
        return f"{doc.get('error')}: {doc.get('detail', '')}".rstrip(": ")
    except ValueError:
        return resp.text[:200]
