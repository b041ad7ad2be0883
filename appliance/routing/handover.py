"""The supervisor's half of dynamic membership: bring an executor in once it is ready, take one out drained.

The query nodes' half is appliance/routing/membership.py. Whoever starts and stops executors (`appliance
up`, appliance/fleet.py; on AWS the autoscaling group and its lifecycle hook's drain agent) follows two
orders:

- join: start the executor, wait for its `/readyz`, then name it in the membership source (the members
  file); each query node prewarms it and only then routes to it;
- leave: remove it from the source, wait until the query nodes' rings no longer hold it (`GET /admin/ring`),
  then drain it (`POST /admin/drain?wait=`: it refuses new batches, which the dispatcher re-sends elsewhere,
  and the call returns once its in-flight batches are done), and only then stop it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import requests

from appliance.query.dispatch import INTERNAL_TOKEN_HEADER

log = logging.getLogger("appliance.routing")
POLL = 0.2


def wait_ready(url: str, timeout: float) -> None:
    """Wait until the node at `url` answers `/readyz` 200; TimeoutError after `timeout` seconds."""
    _wait(lambda: _status(f"{url}/readyz") == 200, timeout, f"{url} did not become ready")


def wait_routed(url: str, query_urls: Iterable[str], admin_key: str, in_ring: bool, timeout: float) -> bool:
    """Wait until every query node's ring holds `url` (or, `in_ring` False, no longer does); False when
    `timeout` passes first. A query node that does not answer counts as not there yet."""
    urls = list(query_urls)

    def settled() -> bool:
        for query in urls:
            try:
                resp = requests.get(f"{query}/admin/ring", headers={"x-api-key": admin_key}, timeout=5)
                ring = resp.json().get("ring", []) if resp.status_code == 200 else None
            except (requests.RequestException, ValueError):
                ring = None
            if ring is None or (url in ring) != in_ring:
                return False
        return True

    try:
        _wait(settled, timeout, "")
    except TimeoutError:
        return False
    return True


def drain(url: str, token: str, wait: float) -> bool:
    """Drain the executor at `url` and wait (at most `wait` seconds) for its in-flight work; True when idle.
    An executor already gone is as drained as it gets: True."""
    try:
        resp = requests.post(f"{url}/admin/drain", params={"wait": wait},
                             headers={INTERNAL_TOKEN_HEADER: token}, timeout=wait + 30)
    except requests.ConnectionError:
        return True
    except requests.RequestException as exc:
        log.warning("draining %s failed: %s", url, exc)
        return False
    return resp.status_code == 200 and bool(resp.json().get("idle"))


def retire(url: str, query_urls: Iterable[str], admin_key: str, token: str, timeout: float,
           settle: float = 1.0) -> bool:
    """After `url` was removed from the membership source: wait for the query nodes to drop it from their
    rings, `settle` seconds more (a search that read the old ring just before the swap sends its batch
    meanwhile, and the drain waits for it), then drain it. True when it ended idle; the caller stops it
    either way."""
    if not wait_routed(url, query_urls, admin_key, in_ring=False, timeout=timeout):
        log.warning("query nodes still route to %s after %.0f s; draining it anyway (its batches are re-sent)",
                    url, timeout)
    time.sleep(settle)
    return drain(url, token, timeout)


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return 0


def _wait(condition, timeout: float, message: str) -> None:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(message)
        time.sleep(POLL)
