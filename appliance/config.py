"""One settings object for every process of the appliance.

Each knob is declared once, below, with its default, its environment variable and its help text; the
`appliance` CLI builds its flags from the same declarations, and `appliance up` hands the resolved values
to the processes it starts as environment variables. That keeps the three ways of setting a knob (flag,
environment, TOML file) from drifting apart. Precedence: flag > environment > TOML file > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.storage.root import StorageRoot

ENV_PREFIX = "APPLIANCE_"
CONFIG_FILE_ENV = "APPLIANCE_CONFIG"


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Every setting of every fleet; a process reads the ones its role needs."""

    data: str = _knob(
        "./data", "Storage root: a local folder, or an `s3://bucket/prefix` (also `gs://`, `az://`) URI. Tables and "
        "index objects live under it. `--storage` is an alias of `--data`."
    )
    storage_options: str = _knob(
        "", "Object-store options as comma-separated `key=value`, in Lance's names (`aws_endpoint`, `aws_region`, "
        "`aws_access_key_id`, `aws_secret_access_key`, `allow_http`, ...). Empty: the standard AWS/GCS/Azure "
        "environment and credential chain."
    )
    host: str = _knob("127.0.0.1", "Address the query node listens on.")
    port: int = _knob(8080, "Port of the public HTTP API (the query node).")
    executors: int = _knob(2, "Number of plan executors `appliance up` starts.")
    executor_base_port: int = _knob(8181, "First internal port of the executors `appliance up` starts.")
    flight_port_offset: int = _knob(
        1000, "An executor serves task batches over Arrow Flight on its HTTP port plus this offset, on the same "
        "address (8181 -> 9181); its HTTP port keeps health, drain and metrics. Query nodes learn the Flight "
        "port from the executor's /readyz. 0: no Flight server; query nodes send it task batches over HTTP."
    )
    executor_urls: str = _knob(
        "", "Comma-separated executor URLs the query node routes to, fixed while it runs (used when neither "
        "`executor_members_file` nor `executor_asg` is set)."
    )
    executor_members_file: str = _knob(
        "", "JSON file listing the executor URLs a query node routes to; re-read when it changes, so executors "
        "join and leave without a restart (`appliance up` writes it). Replaces `executor_urls` when set."
    )
    executor_asg: str = _knob(
        "", "Name of the EC2 autoscaling group of the executors: a query node routes to its InService instances "
        "(`http://<private ip>:<executor_asg_port>`), looked up every `membership_poll_seconds` with the "
        "instance role (autoscaling:DescribeAutoScalingGroups, ec2:DescribeInstances)."
    )
    executor_asg_port: int = _knob(8181, "HTTP port of the executors found through `executor_asg`.")
    api_key: str = _knob(
        "", "API key clients send in x-api-key. Unset: one is generated and kept under the data root."
    )
    api_keys_file: str = _knob(
        "", "File of further accepted API keys, hashed: one `sha256:<hex> [name]` per line (`appliance hash-key "
        "KEY` prints a line). The query node reads it at start."
    )
    internal_token: str = _knob(
        "", "Shared secret between query nodes and executors. Unset: `appliance up` generates one."
    )
    admin_key: str = _knob(
        "", "Key for the query node's /admin/* endpoints, sent in x-api-key. Unset: the API key."
    )
    query_threads: int = _knob(8, "Request threads of each of the query node's gunicorn workers.")
    query_workers: int = _knob(
        1, "gunicorn worker processes of a query node. They share the node's drain state and see each other's "
        "writes at once (appliance/node_state.py). 1 on a small machine: on 2 cores shared with the executors, "
        "under 8 clients, 2 workers took 4.5 ms of query-node CPU per search where 1 took 2.8 (each worker batches "
        "fewer searches and they contend for the cores); more cores may want more."
    )
    query_nodes: int = _knob(
        1, "Query nodes `appliance up` starts, all on `port`: a query node binds its port with SO_REUSEPORT, so "
        "several on one machine share it (the kernel spreads connections over them) and one can restart while "
        "the others answer."
    )
    version_check_seconds: float = _knob(
        0.25, "Seconds a query node reuses the latest version of a table it opened for searches before asking "
        "storage again, so a warm search makes no storage call. Writes through the node are seen by its next "
        "search at once (all its workers); writes through other nodes within this bound. 0: ask every search. "
        "Opening the latest version costs a version listing on storage (a LIST on S3, milliseconds) and about "
        "0.04 ms of CPU locally; at 0.25 s a node under load asks 4 times a second per table instead of per search."
    )
    executor_threads: int = _knob(4, "Request threads of each executor's gunicorn worker.")
    keep_alive: int = _knob(
        75, "Seconds a query node or executor keeps an idle client connection open for its next request "
        "(gunicorn `--keep-alive`). Keep it longer than the idle timeout of the clients and load balancers in "
        "front (AWS ALB 60 s, nginx upstream 60 s), so they, not the node, close idle connections: a node "
        "closing one just as a client reuses it fails that request (\"connection closed before message completed\")."
    )
    kernel_threads: int = _knob(1, "BLAS/faiss threads per executor, so executors do not oversubscribe cores.")
    build_threads: int = _knob(
        0, "BLAS/faiss threads of an explicit index build (`POST .../index`, the LanceDB client's `create_index`) on "
        "the query node, while it runs; 0: every core the node may use. The build then competes with the node's "
        "searches for those cores (their latency rises until it ends): set 1 where a query node shares its cores "
        "with serving that must not slow down. The indexers' background builds keep `indexer_threads`."
    )
    cache_ram_bytes: int = _knob(
        0, "RAM tier of each executor's cache, in bytes. 0: 25% of the machine's memory split over `executors`."
    )
    cache_disk_bytes: int = _knob(
        0, "NVMe tier of each executor's cache, in bytes. 0: half the cache disk's free space split over `executors`."
    )
    cache_dir: str = _knob(
        "", "Local folder of the NVMe cache tier; each executor keeps its own `executor-<port>` folder in it. "
        "Empty: `appliance-cache` in the system temp folder."
    )
    max_k: int = _knob(10_000, "Largest k a search may ask for.")
    max_body_bytes: int = _knob(256 * 1024 * 1024, "Largest request body, in bytes.")
    max_batch_rows: int = _knob(200_000, "Most rows one insert request may carry.")
    max_query_vectors: int = _knob(1_000, "Most query vectors one search request may carry.")
    search_batch_rows: int = _knob(
        256, "Concurrent searches of the same shape run as one batch of up to this many query vectors "
        "(one plan, one executor request each, one scan per partition). 0: every search runs alone."
    )
    search_batches_inflight: int = _knob(
        1, "Batches of one search shape running at once on a query node; more searches queue for the next."
    )
    recall_sample_rate: float = _knob(
        0.01, "Share of index searches a query node re-runs exactly in the background to measure recall@k "
        "(the recall monitor: gauge appliance_recall_at_k, `recall_monitor` in GET .../index). 0: off."
    )
    recall_sample_per_second: float = _knob(1.0, "Most searches per second the recall monitor re-runs exactly.")
    recall_window: int = _knob(100, "Samples the recall monitor averages per table (the most recent).")
    recall_budget: float = _knob(
        0.02, "Share of the time the recall monitor's exact re-runs may take: one that took t seconds admits the "
        "next t x (1/budget - 1) seconds later (a re-run scans the whole table, so large tables are sampled less)."
    )
    routing_eps: float = _knob(0.25, "Bounded-load slack: no executor gets more than (1+eps) x the mean tasks.")
    partition_group_bytes: int = _knob(
        256 * 2**20, "Most bytes of one routing group: a table's IVF partitions (index objects) and its fragments "
        "(rows x dimension x 4) are cut into groups of consecutive ones up to this size, and every task of a group "
        "goes to the group's executor, so a small table lives whole on one executor (and in its cache) and a large "
        "one spreads. Fixed rather than derived from an executor's RAM so every query node computes the same "
        "groups; 256 MiB is an eighth of the RAM cache tier of an executor with 2 GiB (25% of 16 GiB split over "
        "2), so several groups fit in each."
    )
    fanout_min_bytes: int = _knob(
        64 * 2**20, "Least work (bytes a plan scans, counted once per query: index objects of the probed "
        "partitions, unindexed or exact-scanned rows x dimension x 4) before a search fans out to one executor per "
        "group; below it every task goes to the executor of the group holding most of the work (one hop). "
        "Fanning out pays once half the scan takes longer than the extra hop costs: measured on 2 cores, a flat "
        "IVF scan runs about 9.5 MiB per CPU ms and a second executor adds 2.3-3.7 ms of CPU per query, so "
        "2 x 3 ms x 9.5 MiB/ms = 57 MiB, rounded up (docs/ARCHITECTURE.md, \"Routing groups\"). 0: always fan out."
    )
    group_replicas: int = _knob(
        1, "Executors that may serve each routing group: each search goes to one of them, chosen by a hash of "
        "its query vectors (a repeated query meets the same cache), so a hot table's load spreads over this many "
        "ring successors at the price of caching its groups that many times. 1: one executor per group."
    )
    health_interval: float = _knob(1.0, "Seconds between the query node's health checks of each executor.")
    membership_poll_seconds: float = _knob(
        10.0, "Seconds between a query node's looks at the executor autoscaling group (`executor_asg`); a "
        "members file is looked at every `health_interval` (one stat). A newcomer joins the ring once its /readyz "
        "answers and it has prewarmed; a leaver is taken out of the ring at the next look."
    )
    membership_prewarm_seconds: float = _knob(
        30.0, "Most seconds a query node spends prewarming a new executor (having it load the routing groups "
        "the new ring gives it) before it joins the ring; past this it joins anyway, and says so in the log."
    )
    request_timeout: float = _knob(30.0, "Seconds a query node waits for one executor batch.")
    search_timeout: float = _knob(
        30.0, "Seconds a search may run before it is stopped on every node and answered 504; a client may "
        "ask for less with the `x-timeout-ms` header (or `timeout_ms` in a native search body)."
    )
    startup_timeout: float = _knob(60.0, "Seconds `appliance up` waits for the fleet to become ready.")
    events: str = _knob(
        "", "Event queue between query nodes and indexers. Empty: a SQLite file `_appliance/events.sqlite` under "
        "a local data root; `sqlite:///path`; or `sqs://NAME[?endpoint_url=URL&region=R]` (an SQS FIFO queue)."
    )
    event_visibility_timeout: float = _knob(
        60.0, "Seconds a received event stays hidden before it is delivered again (an indexer extends it while "
        "it works, so this is how long a crashed indexer's table waits)."
    )
    event_max_receives: int = _knob(5, "Deliveries of one event without success before it is dead-lettered.")
    indexers: int = _knob(1, "Indexers `appliance up` may run at once, started when events wait (0: none).")
    indexer_idle_timeout: float = _knob(60.0, "Seconds without events after which an indexer exits (scale to zero).")
    indexer_min_rows: int = _knob(4096, "Rows a table needs before the indexer builds its first index.")
    indexer_codec: str = _knob(
        "auto", "Codec of the indexes the indexer builds by itself: auto (hnsw_sq up to 262,144 rows, flat above), "
        "or one of flat, fp16, sq8, pq, pq4, hnsw_flat, hnsw_sq."
    )
    indexer_growth: float = _knob(
        1.0, "Full rebuild (retrain centroids) once the table has grown by this fraction since the last training."
    )
    indexer_max_deltas: int = _knob(32, "Full rebuild once an index has this many partial (delta) versions.")
    indexer_compact_fragments: int = _knob(16, "Compact a table once it has this many small fragments.")
    indexer_cleanup_grace: float = _knob(
        3600.0, "Seconds an old table or index version stays readable after it was superseded, before cleanup."
    )
    indexer_threads: int = _knob(1, "BLAS/faiss threads of an indexer, so a build leaves cores to the executors.")
    indexer_nice: int = _knob(10, "Niceness an indexer adds to itself, so builds yield the CPU to queries.")
    log_level: str = _knob("info", "Log level of every process (debug, info, warning, error).")

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        """Resolve settings from a TOML file, the environment and explicit overrides (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        config_path = env.get(CONFIG_FILE_ENV)
        if config_path:
            values.update(_read_toml(Path(config_path)))
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for the child processes of a fleet."""
        return {env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def storage_root(self) -> StorageRoot:
        """The storage root with its options, the one way every process opens storage."""
        from appliance.storage.root import StorageRoot

        return StorageRoot.parse(self.data, self.storage_options)

    @property
    def executor_url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.executor_urls.split(",") if u.strip()]


FLAG_ALIASES = {"data": ("--storage",)}


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def add_setting_flags(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add one `--flag` per setting (all, or the named ones) with its env var and default in the help."""
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            *FLAG_ALIASES.get(f.name, ()),
            dest=f.name,
            type=_type_of(f),
            default=None,
            # argparse %-formats help texts ("%(default)s"); a literal % in a setting's help must be doubled
            help=f"{f.metadata['help']} [env {env_name(f.name)}; default {f.default!r}]".replace("%", "%%"),
        )


def settings_table_markdown() -> str:
    """The settings as a Markdown table, so the README can be checked against the code."""
    lines = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        lines.append(f"| `{flag}` | `{env_name(f.name)}` | `{f.default!r}` | {f.metadata['help']} |")
    return "\n".join(lines)


def _type_of(f: dataclasses.Field) -> type:
    return {"int": int, "float": float}.get(str(f.type), str)


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    try:
        return _type_of(f)(raw)
    except ValueError as exc:
        raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {f.type}") from exc


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        doc = tomllib.load(fh)
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    return doc
