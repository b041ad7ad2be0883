"""The `appliance` command.

    appliance up        start a whole fleet on this machine (the embedded default) and keep it running
    appliance serve     run one node (query or executor) in the foreground, as a cloud host does
    appliance index     build and publish a table's IVF index now, with a progress bar
    appliance indexer   run one indexer: handle table events (index, compact, clean up) until idle
    appliance cache     print the fleet's cache statistics (per executor and tier) from a running query node
    appliance load      load Parquet, .npy (+ payload), JSONL, CSV or Lance files into a table of a running fleet
    appliance tables    list the tables of a running fleet (rows, dimension, metric, version, index)
    appliance describe  one table: schema, fragments, index and indexer state
    appliance status    is the fleet ready: executors, ring, cache hit rates, indexers and event queue
    appliance settings  print every setting with its flag, environment variable and default
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence

import pyarrow as pa
import requests
from tqdm import tqdm

from appliance import __version__, launch
from appliance import load as load_module
from appliance.config import Settings, add_setting_flags, settings_table_markdown
from appliance.errors import ApplianceError, TableNotFound
from appliance.fleet import Fleet, FleetError
from appliance.index import CODECS, IndexParams, IndexStore
from appliance.index.builder import build_full
from appliance.query.admin import cache_table
from appliance.query.auth import API_KEY_BLOB, API_KEY_HEADER, hash_key
from appliance.storage import BlobStore, TableStore
from appliance.storage.schema import METRICS
from kernels.threads import thread_budget


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
    index.add_argument("--nprobes", type=int, default=0,
                       help="default probes per query (default: nlist/6 up to 32, or what the target recall needs)")
    index.add_argument("--pq-m", type=int, default=0, help="PQ sub-vectors (default dimension/8)")
    index.add_argument("--seed", type=int, default=0)
    add_setting_flags(index, ["data", "storage_options"])
    index.set_defaults(func=cmd_index)

    cache = sub.add_parser("cache", help="print the fleet's cache statistics from a running query node")
    cache.add_argument("--url", help="query node URL (default: http://HOST:PORT of the settings)")
    cache.add_argument("--api-key", help="API key (default: APPLIANCE_API_KEY, else the key kept under --data)")
    add_setting_flags(cache, ["data", "storage_options", "host", "port"])
    cache.set_defaults(func=cmd_cache)

    load = sub.add_parser("load", help="load files into a table of a running fleet (created when absent)",
                          description=load_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load.add_argument("table")
    load.add_argument("files", nargs="+", metavar="FILE", help="files, folders or globs (local, or s3://...)")
    load.add_argument("--payload", help="payload of a .npy file, row-aligned: JSONL[.gz] or Parquet")
    load.add_argument("--metric", choices=METRICS, default="cosine",
                      help="metric of a table the load creates (default: cosine)")
    load.add_argument("--vector-column", default="vector", help="the input's vector column or field")
    load.add_argument("--batch-rows", type=int, default=0,
                      help="rows per insert, hence per fragment (default: 16 MiB of vectors, 8,192 to 65,536 rows)")
    load.add_argument("--resume", action="store_true",
                      help="skip as many input rows as the table holds (it was loaded from these files, in order)")
    load.add_argument("--start-row", type=int, default=0, help="skip this many input rows")
    _client_flags(load)
    load.set_defaults(func=cmd_load)

    tables = sub.add_parser("tables", help="list the tables of a running fleet")
    _client_flags(tables, json_flag=True)
    tables.set_defaults(func=cmd_tables)

    describe = sub.add_parser("describe", help="one table of a running fleet: schema, fragments, index, indexer")
    describe.add_argument("table")
    _client_flags(describe, json_flag=True)
    describe.set_defaults(func=cmd_describe)

    status = sub.add_parser("status", help="a running fleet: ready?, executors, ring, cache, indexers, events")
    _client_flags(status, json_flag=True)
    status.set_defaults(func=cmd_status)

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
    print(f"[appliance] starting {max(1, settings.query_nodes)} query node(s) and {settings.executors} executors "
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
        f"  Console: {url}/  (sign in with the API key; Swagger UI at {url}/docs)",
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
        with tqdm(total=rows, unit="rows", desc=f"indexing {args.table}") as bar, \
                thread_budget(settings.build_threads):
            manifest = build_full(tables, IndexStore(root), args.table, params, progress=bar.update)
    except ApplianceError as exc:
        where = f" in data root {settings.data}" if isinstance(exc, TableNotFound) else ""
        print(f"error: {exc.message}{where}" + (f" ({exc.detail})" if exc.detail else ""), file=sys.stderr)
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
    """Replace this process with gunicorn serving one role on the settings' host and port: the launcher's line
    (appliance/launch.py), the one `appliance up` starts its nodes with, settings passed by environment."""
    cmd = launch.node(_settings(args), args.role)
    print("[appliance] exec " + shlex.join(cmd.argv), flush=True)
    os.execve(cmd.argv[0], cmd.argv, cmd.env)
    return 0  # not reached


# ---------------------------------------------------------------- commands against a running fleet


def _client_flags(parser: argparse.ArgumentParser, json_flag: bool = False) -> None:
    parser.add_argument("--url", help="query node URL (default: http://HOST:PORT of the settings, "
                        "APPLIANCE_HOST and APPLIANCE_PORT)")
    parser.add_argument("--api-key", help="API key (default: APPLIANCE_API_KEY, else the key `appliance up` "
                        "keeps under the data root)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_setting_flags(parser, ["data", "storage_options", "host", "port"])


def _client(args: argparse.Namespace) -> load_module.Fleet:
    settings = Settings.load({"data": args.data, "storage_options": args.storage_options, "host": args.host,
                             "port": args.port})
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    key = args.api_key or settings.api_key
    if not key:
        try:
            stored = BlobStore(settings.storage_root()).get(API_KEY_BLOB)
        except Exception:  # noqa: BLE001 - no key kept there: the fleet will say 401, naming the URL
            stored = None
        key = stored.decode().strip() if stored else ""
    return load_module.Fleet(url, key)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _table_info(client: load_module.Fleet, table: str) -> dict:
    info = client.describe(table)
    if info is None:
        raise load_module.LoadError(f"table '{table}' was not found at {client.url}")
    return info


def cmd_load(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        outcome = load_module.load(client, args.table, args.files, metric=args.metric,
                                   vector_column=args.vector_column, payload=args.payload,
                                   batch_rows=args.batch_rows, resume=args.resume, start_row=args.start_row)
    except (load_module.LoadError, KeyboardInterrupt, OSError, ValueError, pa.ArrowException) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        print("\ninterrupted" if interrupted else f"error: {exc}", file=sys.stderr)
        outcome = getattr(exc, "outcome", None)
        if outcome is not None:
            print(load_module.committed_report(client, args.table, outcome), file=sys.stderr)
        return 130 if interrupted else 1
    info = client.describe(args.table) or {}
    print(f"loaded {outcome.committed:,} rows into '{args.table}' at {client.url}: the table holds "
          f"{info.get('rows', 0):,} rows in {info.get('fragments', 0)} fragments, version {info.get('version')}",
          flush=True)
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        names = client.json("GET", "/api/v1/tables")["tables"]
        infos = []
        for name in names:
            info = client.describe(name)
            if info is None:  # dropped meanwhile
                continue
            index = client.json("GET", f"/api/v1/tables/{name}/index")
            infos.append({**{k: info[k] for k in ("name", "rows", "dimension", "metric", "version", "fragments")},
                          "index_version": index.get("index_version")})
    except load_module.LoadError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"url": client.url, "tables": infos}, indent=2))
        return 0
    if not infos:
        print(f"no tables at {client.url}")
        return 0
    print(text_table(["table", "rows", "dimension", "metric", "version", "fragments", "index"],
                     [[i["name"], f"{i['rows']:,}", i["dimension"], i["metric"], i["version"], i["fragments"],
                       "-" if i["index_version"] is None else f"v{i['index_version']}"] for i in infos]))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        info = _table_info(client, args.table)
        index = client.json("GET", f"/api/v1/tables/{args.table}/index")
    except load_module.LoadError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"url": client.url, "table": info, "index": index}, indent=2))
        return 0
    lines = [f"table      {info['name']}  ({client.url})", f"rows       {info['rows']:,}",
             f"dimension  {info['dimension']}", f"metric     {info['metric']}", f"version    {info['version']}",
             f"fragments  {info['fragments']}", "", "columns:"]
    lines += ["  " + row for row in text_table(["name", "type", "nullable"], [
        [c["name"], c["type"], "yes" if c["nullable"] else "no"] for c in info["schema"]]).splitlines()]
    lines += ["", "index:"]
    lines += [f"  {k}: {_short(v)}" for k, v in index.items() if k != "events"]
    if index.get("events") is not None:
        lines += ["", "event queue:"] + [f"  {k}: {_short(v)}" for k, v in index["events"].items()]
    print("\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        ready = client.call("GET", "/readyz")
        doc: dict = {"url": client.url, "readyz": ready.json() if ready.content else {}}
        for name, path in (("ring", "/admin/ring"), ("cache", "/admin/cache")):
            resp = client.call("GET", path)
            doc[name] = resp.json() if resp.status_code == 200 else {
                "error": f"{path} answered {resp.status_code}: {load_module._error_text(resp)}"}
        tables = client.json("GET", "/api/v1/tables")["tables"]
        doc["tables"] = {t: client.json("GET", f"/api/v1/tables/{t}/index", ok=(200, 404)) for t in tables}
    except load_module.LoadError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0 if doc["readyz"].get("ready") else 1
    print(status_text(doc))
    return 0 if doc["readyz"].get("ready") else 1


def status_text(doc: dict) -> str:
    r = doc["readyz"]
    lines = [f"fleet at {doc['url']}: " + ("READY" if r.get("ready") else "NOT READY")
             + f" (version {r.get('version')}, {r.get('executors_live')} of {r.get('executors')} executors live)"]
    lines += [f"  problem: {p}" for p in r.get("problems", [])]
    ring = doc["ring"]
    lines += ["", "executors:"]
    if "error" in ring:
        lines.append(f"  {ring['error']}")
    else:
        now = time.time()
        rows = []
        for m in ring.get("members", []):
            state = ("joining" if m.get("joining") else "live" if m.get("url") in ring.get("live", []) else "down") + (
                ", draining" if m.get("draining") else "")
            seen = f"{now - m['last_seen']:.1f}s ago" if m.get("last_seen") else "never"
            rows.append([m.get("url", ""), state, seen, m.get("flight") or "-", m.get("last_error") or ""])
        lines += ["  " + x for x in text_table(["executor", "state", "last seen", "flight", "last error"],
                                               rows).splitlines()]
    cache = doc["cache"]
    lines += ["", "cache:"]
    if "error" in cache:
        lines.append(f"  {cache['error']}")
    else:
        lines += ["  " + x for x in cache_table(cache).splitlines()]
    lines += ["", "tables:"]
    rows = []
    events = None
    for name, idx in doc["tables"].items():
        indexer = idx.get("indexer") or {}
        events = idx.get("events") or events
        rows.append([name, "-" if idx.get("index_version") is None else f"v{idx['index_version']}",
                     f"{idx.get('indexed_rows', 0):,}", f"{idx.get('unindexed_rows', 0):,}",
                     indexer.get("state", "-") if isinstance(indexer, dict) else _short(indexer)])
    lines += ["  " + x for x in text_table(["table", "index", "indexed rows", "unindexed rows", "indexer"],
                                           rows).splitlines()] if rows else ["  none"]
    if events:
        lines += ["", "event queue: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in events.items())]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in r] for r in (header, *rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 100 else text[:97] + "..."


if __name__ == "__main__":
    raise SystemExit(main())
