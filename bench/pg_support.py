"""A private PostgreSQL + pgvector cluster for benchmarks: started on a free loopback port, dropped afterwards.

The binaries are PostgreSQL 15's from Debian (`/usr/lib/postgresql/15/bin`) with pgvector built against them;
`../shared/tools/pgvector-setup.sh` (as root) installs both. The Python side is psycopg 3 and the pgvector
adapter (`requirements-test.txt`). `skip_reason()` says what is missing, or None when all is there.

PostgreSQL refuses to run as root: when the benchmark runs as root, the cluster's processes run as the
`postgres` user (`nobody` where there is none) through `runuser`, with their folder owned by that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PG_VERSIONS = ("17", "16", "15")  # the first installed, newest first
SETUP = "../shared/tools/pgvector-setup.sh"

# Server settings beside PostgreSQL's defaults: the table and its HNSW graph (about 250 MB) fit in shared
# buffers, the graph is built in memory (pgvector warns and slows down when it does not fit
# maintenance_work_mem), and durability is off, which only speeds up the load of a throwaway cluster.
SERVER_SETTINGS = {
    "shared_buffers": "1GB",
    "maintenance_work_mem": "1GB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def pg_bin() -> Path | None:
    for version in PG_VERSIONS:
        path = Path(f"/usr/lib/postgresql/{version}/bin")
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    return None


def skip_reason() -> str | None:
    """Why pgvector cannot be benchmarked here, or None."""
    bindir = pg_bin()
    if bindir is None:
        return (f"PostgreSQL server binaries not found under /usr/lib/postgresql/{{{','.join(PG_VERSIONS)}}}/bin "
                f"(run {SETUP} as root)")
    version = bindir.parent.name
    if not Path(f"/usr/share/postgresql/{version}/extension/vector.control").exists():
        return f"the pgvector extension is not installed for PostgreSQL {version} (run {SETUP} as root)"
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        return f"Python packages missing ({exc}): pip install 'psycopg[binary]' pgvector (requirements-test.txt)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and `runuser` is not there to start PostgreSQL as another user"
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    port: int
    data: Path
    bindir: Path
    version: str
    user: str = "bench"

    def connect(self, vector: bool = True):
        """A psycopg connection (autocommit) with the pgvector adapter registered (numpy arrays <-> vector)."""
        import psycopg
        from pgvector.psycopg import register_vector

        conn = psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True)
        if vector:
            register_vector(conn)
        return conn

    @property
    def postmaster_pid(self) -> int:
        """The postmaster (its descendants are every backend and background worker)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])


@contextmanager
def private_cluster(settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    """initdb a cluster in a temporary folder, start it on a free loopback port (trust authentication for the
    superuser `bench`, no Unix socket outside the folder), create the `vector` extension; stop and delete it
    when the block ends."""
    reason = skip_reason()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = pg_bin()
    assert bindir is not None
    prefix: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                owner = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if owner is None:
            raise RuntimeError("running as root and neither user postgres nor nobody exists")
        prefix = ["runuser", "-u", owner.pw_name, "--"]
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    data, log = root / "data", root / "server.log"
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], env=env, cwd=root, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stderr[-2000:]}{tail}")

    port = _free_port()
    options = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(root),
               **SERVER_SETTINGS, **(settings or {})}
    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8", "--locale=C",
            "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "120",
            "-o", " ".join(f"-c {k}={v}" for k, v in options.items()), "start")
        started = True
        cluster = Cluster(port, data, bindir, bindir.parent.name)
        with cluster.connect(vector=False) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield cluster
    finally:
        if started:
            try:
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"pgvector: stopping the cluster: {exc}", flush=True)
        shutil.rmtree(root, ignore_errors=True)


def load_vectors(cluster: Cluster, table: str, vectors: np.ndarray) -> float:
    """CREATE TABLE (id int primary key, embedding vector(dim)), COPY `vectors` in (binary COPY, id = row
    position) and VACUUM ANALYZE it; seconds taken."""
    started = time.perf_counter()
    with cluster.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, embedding vector({vectors.shape[1]}))")
        with conn.cursor() as cur, cur.copy(f"COPY {table} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "vector"])
            for i, vector in enumerate(vectors):
                copy.write_row((i, vector))
        # Now, not in an autovacuum worker during a measured phase (whose CPU the benchmark counts as the server's):
        conn.execute(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - started


def build_hnsw(cluster: Cluster, table: str, m: int, ef_construction: int, ops: str = "vector_cosine_ops") -> float:
    """CREATE INDEX ... USING hnsw; seconds taken (PostgreSQL's default parallel maintenance workers)."""
    started = time.perf_counter()
    with cluster.connect() as conn:
        conn.execute(f"CREATE INDEX ON {table} USING hnsw (embedding {ops}) "
                     f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})")
    return time.perf_counter() - started
