"""The `appliance` command.

    appliance up        start a whole fleet on this machine (the embedded default) and keep it running
    appliance serve     run one node (query or executor) in the foreground, as a cloud host does
    appliance index     build and publish a table's IVF index now, with a progress bar
    appliance indexer   run one indexer: handle table events (index, compact, clean up) until idle
    appliance cache     print the fleet's cache statistics (per executor and tier) from a running query node
    appliance settings  print every setting with its flag, environment variable and default
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence

import requests
from tqdm import tqdm

from appliance import __version__
from appliance.config import Settings, add_setting_flags, settings_table_markdown
from appliance.errors import ApplianceError
from appliance.fleet import EXECUTOR_APP, QUERY_APP, Fleet, FleetError, gunicorn_node_args
from appliance.index import CODECS, IndexParams, IndexStore
from appliance.index.builder import build_full
from appliance.query.admin import cache_table
from appliance.query.auth import API_KEY_BLOB, API_KEY_HEADER, hash_key
from appliance.storage import BlobStore, TableStore


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance", description="GPU/CPU hybrid vector search appliance")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a query node and executors on this machine")
    add_setting_flags(up)
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one node in the foreground under gunicorn")
    serve.add_argument("role", choices=["query", "executor"])
    add_setting_flags(serve)
    serve.set_defaults(func=cmd_serve)

    index = sub.add_parser("index", help="build and publish a full IVF index of a table now")
    index.add_argument("table")
    index.add_argument("--codec", choices=CODECS, default="flat")
    index.add_argument("--nlist", type=int, default=0, help="partitions (default about sqrt(rows))")
    index.add_argument("--nprobes", type=int, default=0, help="default probes per query (default nlist/6)")
    index.add_argument("--pq-m", type=int, default=0, help="PQ sub-vectors (default dimension/8)")
    index.add_argument("--seed", type=int, default=0)
    add_setting_flags(index, ["data", "storage_options"])
    index.set_defaults(func=cmd_index)

    cache = sub.add_parser("cache", help="print the fleet's cache statistics from a running query node")
    cache.add_argument("--url", help="query node URL (default: http://HOST:PORT of the settings)")
    cache.add_argument("--api-key", help="API key (default: APPLIANCE_API_KEY, else the key kept under --data)")
    add_setting_flags(cache, ["data", "storage_options", "host", "port"])
    cache.set_defaults(func=cmd_cache)

    indexer = sub.add_parser("indexer", help="run one indexer: handle table events until idle, then exit 0")
    add_setting_flags(indexer, INDEXER_SETTINGS)
    indexer.set_defaults(func=cmd_indexer)

    hashed = sub.add_parser("hash-key", help="print the api_keys_file line for an API key (read from stdin if -)")
    hashed.add_argument("key")
    hashed.set_defaults(func=lambda args: print(
        hash_key(sys.stdin.readline().strip() if args.key == "-" else args.key)) or 0)

    show = sub.add_parser("settings", help="print every setting as a Markdown table")
    show.set_defaults(func=lambda _args: print(settings_table_markdown()) or 0)

    args = parser.parse_args(argv)
    return args.func(args)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "role")}
    return Settings.load(overrides)


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"[appliance] starting 1 query node and {settings.executors} executors "
          f"(storage: {settings.data})", flush=True)
    try:
        settings.storage_root().check_reachable()
    except ApplianceError as exc:
        print(f"[appliance] error: {exc.message}" + (f" ({exc.detail})" if exc.detail else ""), file=sys.stderr)
        return 1
    fleet = Fleet(settings)
    try:
        fleet.start()
    except FleetError as exc:
        print(f"[appliance] error: {exc}", file=sys.stderr)
        return 1

    def _stop(signum: int, _frame: object) -> None:
        fleet._stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print(ready_banner(fleet.url, fleet.api_key), flush=True)
    fleet.supervise()
    print("[appliance] stopping the fleet...", flush=True)
    fleet.stop()
    print("[appliance] stopped.", flush=True)
    return 0


def ready_banner(url: str, api_key: str) -> str:
    h = f"-H 'x-api-key: {api_key}' -H 'content-type: application/json'"
    return "\n".join([
        "",
        f"  appliance {__version__} is ready",
        f"  URL:     {url}",
        f"  API key: {api_key}",
        "",
        "  Try it (create a table, insert two rows, search):",
        f"    curl -s -X POST {url}/api/v1/tables {h} "
        """-d '{"name": "demo", "dimension": 3, "metric": "cosine", "schema": {"title": "string"}}'""",
        f"    curl -s -X POST {url}/api/v1/tables/demo/rows {h} "
        """-d '{"rows": [{"vector": [1, 0, 0], "title": "east"}, {"vector": [0, 1, 0], "title": "north"}]}'""",
        f"    curl -s -X POST {url}/api/v1/tables/demo/search {h} "
        """-d '{"vector": [0.9, 0.1, 0], "k": 1}'""",
        "",
        "  Ctrl-C stops the fleet.",
        "",
    ])


def cmd_index(args: argparse.Namespace) -> int:
    """Build in this process against the storage root; the query nodes pick the new version up by
    themselves (they re-read the index pointer)."""
    settings = Settings.load({"data": args.data, "storage_options": args.storage_options})
    root = settings.storage_root()
    tables = TableStore(root)
    params = IndexParams(codec=args.codec, nlist=args.nlist, nprobes=args.nprobes, pq_m=args.pq_m, seed=args.seed)
    try:
        rows = tables.describe(args.table).rows
        with tqdm(total=rows, unit="rows", desc=f"indexing {args.table}") as bar:
            manifest = build_full(tables, IndexStore(root), args.table, params, progress=bar.update)
    except ApplianceError as exc:
        print(f"error: {exc.message}" + (f" ({exc.detail})" if exc.detail else ""), file=sys.stderr)
        return 1
    print(json.dumps(manifest.describe(), indent=2))
    return 0


INDEXER_SETTINGS = ["data", "storage_options", "events", "event_visibility_timeout", "event_max_receives",
                    "indexer_idle_timeout", "indexer_min_rows", "indexer_codec", "indexer_growth",
                    "indexer_max_deltas", "indexer_compact_fragments", "indexer_cleanup_grace", "indexer_threads",
                    "indexer_nice", "log_level"]


def cmd_indexer(args: argparse.Namespace) -> int:
    """One indexer in the foreground; `appliance up` starts these by itself when events wait."""
    from appliance.indexer.service import Indexer
    from appliance.web import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level)
    return Indexer(settings).run()


def cmd_cache(args: argparse.Namespace) -> int:
    """Ask a query node (it sums the executors); on the fleet's own machine the defaults find it and its
    key, where `appliance up` keeps them, so no flag is needed."""
    settings = Settings.load({"data": args.data, "storage_options": args.storage_options, "host": args.host,
                             "port": args.port})
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    key = args.api_key or settings.api_key
    if not key:
        stored = BlobStore(settings.storage_root()).get(API_KEY_BLOB)
        key = stored.decode().strip() if stored else ""
    try:
        resp = requests.get(f"{url}/admin/cache", headers={API_KEY_HEADER: key}, timeout=30)
    except requests.RequestException as exc:
        print(f"error: no query node answers at {url} ({type(exc).__name__})", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        print(f"error: {url}/admin/cache answered {resp.status_code}: {resp.text.strip()}", file=sys.stderr)
        return 1
    print(cache_table(resp.json()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn serving one role, with settings passed by environment."""
    settings = _settings(args)
    app = QUERY_APP if args.role == "query" else EXECUTOR_APP
    threads = settings.query_threads if args.role == "query" else settings.executor_threads
    bind = f"{settings.host}:{settings.port}"
    env = {**os.environ, **settings.to_env()}
    workers = settings.query_workers if args.role == "query" else 1
    cmd = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers), "--worker-class", "gthread",
           "--threads", str(threads), "--timeout", str(int(settings.request_timeout) + 30),
           "--keep-alive", str(settings.keep_alive), *gunicorn_node_args(), app]
    print("[appliance] exec " + shlex.join(cmd), flush=True)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
