"""The `appliance` command.

    appliance up        start a whole fleet on this machine (the embedded default) and keep it running
    appliance serve     run one node (query or executor) in the foreground, as a cloud host does
    appliance settings  print every setting with its flag, environment variable and default
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence

from appliance import __version__
from appliance.config import Settings, add_setting_flags, settings_table_markdown
from appliance.fleet import EXECUTOR_APP, QUERY_APP, Fleet, FleetError


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

    show = sub.add_parser("settings", help="print every setting as a Markdown table")
    show.set_defaults(func=lambda _args: print(settings_table_markdown()) or 0)

    args = parser.parse_args(argv)
    return args.func(args)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "func", "role")}
    return Settings.load(overrides)


def cmd_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    fleet = Fleet(settings)
    print(f"[appliance] starting 1 query node and {settings.executors} executors "
          f"(storage: {settings.data})", flush=True)
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn serving one role, with settings passed by environment."""
    settings = _settings(args)
    app = QUERY_APP if args.role == "query" else EXECUTOR_APP
    threads = settings.query_threads if args.role == "query" else settings.executor_threads
    bind = f"{settings.host}:{settings.port}"
    env = {**os.environ, **settings.to_env()}
    cmd = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", "1", "--worker-class", "gthread",
           "--threads", str(threads), "--timeout", str(int(settings.request_timeout) + 30), app]
    print("[appliance] exec " + shlex.join(cmd), flush=True)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
