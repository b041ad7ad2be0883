"""Admin endpoints over the whole fleet: `GET /admin/cache` sums the executors' cache statistics.

An operator asks one query node, not every executor (whose internal port and token they need not know).
An executor that does not answer is reported as such and left out of the sums, so the endpoint works
while the fleet is degraded, which is when it is wanted most.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from flask import Blueprint, Response

from appliance.cache.stats import hit_rate
from appliance.query.dispatch import INTERNAL_TOKEN_HEADER
from appliance.routing.membership import Membership
from appliance.web import json_response

TIERS = ("ram", "nvme")
SUMMED = ("hits", "misses", "bytes", "budget", "entries", "evictions")


def admin_api(membership: Membership, token: str, timeout: float = 5.0) -> Blueprint:
    bp = Blueprint("admin", __name__)
    session = requests.Session()

    def executor_stats(url: str) -> dict[str, Any]:
        try:
            resp = session.get(f"{url}/cache/stats", headers={INTERNAL_TOKEN_HEADER: token}, timeout=timeout)
            resp.raise_for_status()
            return {"url": url, "stats": resp.json()}
        except (requests.RequestException, ValueError) as exc:
            return {"url": url, "error": type(exc).__name__}

    @bp.get("/admin/cache")
    def cache() -> Response:
        urls = list(membership.ring.nodes)
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            executors = list(pool.map(executor_stats, urls))
        return json_response(fleet_cache_stats(executors))

    return bp


def fleet_cache_stats(executors: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tier sums over the executors that answered, with the hit rate of the sums (not a mean of rates,
    which would weigh an idle executor like a busy one)."""
    answered = [e["stats"] for e in executors if "stats" in e]
    tiers = {}
    for tier in TIERS:
        sums = {name: sum(s[tier][name] for s in answered) for name in SUMMED}
        tiers[tier] = {**sums, "hit_rate": hit_rate(sums["hits"], sums["misses"])}
    fetches = sum(s["storage"]["fetches"] for s in answered)
    lookups = tiers["ram"]["hits"] + tiers["ram"]["misses"]
    return {
        **tiers,
        "storage": {"fetches": fetches, "errors": sum(s["storage"]["errors"] for s in answered)},
        "hit_rate": (lookups - fetches) / lookups if lookups else None,  # reads served without object storage
        "executors": executors,
    }


def cache_table(doc: dict[str, Any]) -> str:
    """`GET /admin/cache` as a plain-text table, one row per executor and tier, then the fleet's sums."""
    header = ("executor", "tier", "hits", "misses", "hit rate", "bytes", "budget", "entries", "evictions")
    rows = []
    for executor in doc["executors"]:
        if "stats" not in executor:
            rows.append((executor["url"], "-", f"unreachable ({executor['error']})", *[""] * 6))
            continue
        rows += [_row(executor["url"], tier, executor["stats"][tier]) for tier in TIERS]
    rows += [_row("fleet", tier, doc[tier]) for tier in TIERS]
    overall = "-" if doc["hit_rate"] is None else f"{doc['hit_rate']:.1%}"
    rows.append(("fleet", "storage", f"{doc['storage']['fetches']} fetches", "", overall, *[""] * 4))
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in (header, *rows))


def _row(name: str, tier: str, t: dict[str, Any]) -> tuple[str, ...]:
    rate = "-" if t["hit_rate"] is None else f"{t['hit_rate']:.1%}"
    return (name, tier, str(t["hits"]), str(t["misses"]), rate, _size(t["bytes"]), _size(t["budget"]),
            str(t["entries"]), str(t["evictions"]))


def _size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"
