"""`appliance load TABLE FILE...`: stream vectors and their payload from files into a running fleet.

Sources, by file name: Parquet (`.parquet`), NumPy (`.npy`, vectors only, with an optional row-aligned
payload file given by `--payload`: JSONL[.gz] or Parquet), JSON Lines (`.jsonl`, `.jsonl.gz`, `.ndjson`),
CSV (`.csv`, the vector column as JSON-array text), and Lance datasets (a folder with `_versions`, or a
`.lance` folder); a folder or glob of them is loaded in name order. Local paths; `s3://...` (also `gs://`)
for Parquet, JSONL and CSV through pyarrow.fs (credentials from the standard chain).

Memory stays bounded: every source is read in batches of `--batch-rows` rows, and each batch goes to the
query node as one Arrow IPC insert (`POST /api/v1/tables/T/rows`), which commits it as one fragment, so a
load leaves fragments of a size the executors share out (one big insert would be one fragment, scanned by
one executor). The table is created when absent, with `--metric` (default cosine, the metric of sentence
embeddings such as MiniLM), the dimension of the first vector and the payload columns of the first batch.

Every acknowledged batch is committed. On Ctrl-C or an error the loader says how many rows this run
committed, up to which input row, and the table's rows and version; `--resume` then skips as many input
rows as the table holds (the table was loaded from these files, in this order), or `--start-row N` skips N.
"""

from __future__ import annotations

import glob
import gzip
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import requests

from appliance.storage.schema import METRICS  # noqa: F401  (re-exported for the CLI's choices)

ARROW_STREAM = "application/vnd.apache.arrow.stream"
VECTOR = "vector"
SUFFIXES = (".parquet", ".npy", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".csv", ".lance")
TARGET_BATCH_BYTES = 16 * 2**20  # of vectors per insert, when --batch-rows is 0
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 8_192, 65_536
# Arrow type -> the type name a native create-table body takes (appliance/storage/schema.py)
PAYLOAD_TYPE_NAMES = {
    pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary", pa.bool_(): "bool",
    pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64", pa.uint8(): "uint8",
    pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64", pa.float16(): "float32",
    pa.float32(): "float32", pa.float64(): "float64", pa.date32(): "date32", pa.null(): "string",
}


class LoadError(Exception):
    """A problem with the input or the fleet, said in a line."""


@dataclass
class Source:
    """One input: its path, its rows when known up front, and a reader of batches from a row on."""

    path: str
    rows: int | None
    read: Callable[[int, int], Iterator[pa.Table]]  # (skip, batch_rows) -> tables of vector + payload


# ---------------------------------------------------------------- inputs


def expand(inputs: list[str]) -> list[str]:
    """Files, folders (their loadable files, by name) and globs -> the input paths in load order."""
    out: list[str] = []
    for item in inputs:
        if "://" in item:
            out += _expand_uri(item)
        elif _is_lance(item):
            out.append(item)
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.endswith(SUFFIXES) and (os.path.isfile(os.path.join(item, n)) or _is_lance(
                               os.path.join(item, n))))
            if not found:
                raise LoadError(f"folder {item} holds no loadable file ({', '.join(SUFFIXES)})")
            out += found
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(item))
            if not found:
                raise LoadError(f"no file matches {item}")
            out += found
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise LoadError(f"no such file or folder: {item}")
    return out


def _expand_uri(uri: str) -> list[str]:
    fs, path = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(path)
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path))
        found = sorted(f"{scheme}://{i.path}" for i in infos if i.is_file and i.path.endswith(SUFFIXES))
        if not found:
            raise LoadError(f"{uri} holds no loadable file")
        return found
    if info.type != pafs.FileType.File:
        raise LoadError(f"no such object: {uri}")
    return [uri]


def _is_lance(path: str) -> bool:
    return os.path.isdir(path) and (path.rstrip("/").endswith(".lance") or os.path.isdir(
        os.path.join(path, "_versions")))


def _open(path: str) -> Any:
    """A binary input stream of a local path or an object-store URI, un-gzipped when the name says so."""
    if "://" in path:  # pyarrow un-gzips by the name itself
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs.open_input_stream(inner)
    raw = open(path, "rb")  # noqa: SIM115 (closed by the caller's with)
    return gzip.open(raw) if path.endswith(".gz") else raw


def _lines(stream: Any) -> Iterator[bytes]:
    """The lines of a binary stream: a local file's own iteration, or 1 MiB reads of a pyarrow stream."""
    if not isinstance(stream, pa.NativeFile):
        yield from stream
        return
    rest = b""
    while chunk := stream.read(2**20):
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def source(path: str, vector_column: str, payload: str | None) -> Source:
    name = path.rstrip("/").lower()
    if payload is not None and not name.endswith(".npy"):
        raise LoadError("--payload goes with .npy vector files only; other files carry their payload")
    if _is_lance(path):
        return _lance_source(path, vector_column)
    if name.endswith(".parquet"):
        return _parquet_source(path, vector_column)
    if name.endswith(".npy"):
        return _npy_source(path, payload)
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        return Source(path, None, lambda skip, n: _rebatch(_jsonl_tables(path, vector_column, n), skip, n))
    if name.endswith(".csv"):
        return Source(path, None, lambda skip, n: _rebatch(_csv_tables(path, vector_column, n), skip, n))
    raise LoadError(f"{path}: unknown kind of file (known: {', '.join(SUFFIXES)})")


def _parquet_source(path: str, vector_column: str) -> Source:
    def read(skip: int, n: int) -> Iterator[pa.Table]:
        f = _parquet_file(path)
        return _rebatch((_with_vectors(pa.Table.from_batches([b]), vector_column, path)
                         for b in f.iter_batches(batch_size=n)), skip, n)

    return Source(path, _parquet_file(path).metadata.num_rows, read)


def _parquet_file(path: str) -> pq.ParquetFile:
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
        return pq.ParquetFile(fs.open_input_file(inner))
    return pq.ParquetFile(path)


def _lance_source(path: str, vector_column: str) -> Source:
    import lance

    ds = lance.dataset(path)

    def read(skip: int, n: int) -> Iterator[pa.Table]:
        batches = ds.to_batches(batch_size=n, offset=skip) if skip else ds.to_batches(batch_size=n)
        return _rebatch((_with_vectors(pa.Table.from_batches([b]), vector_column, path) for b in batches), 0, n)

    return Source(path, ds.count_rows(), read)


def _npy_source(path: str, payload: str | None) -> Source:
    if "://" in path:
        raise LoadError(f"{path}: .npy files load from local paths only")
    vectors = np.load(path, mmap_mode="r")  # memory-mapped: batches are read as they are sent
    if vectors.ndim != 2:
        raise LoadError(f"{path}: expected a 2-D array (rows x dimension), got shape {vectors.shape}")

    def read(skip: int, n: int) -> Iterator[pa.Table]:
        extra = _payload_rows(payload, n) if payload else None
        if extra is not None and skip:
            extra.take(skip)
        for start in range(skip, len(vectors), n):
            chunk = np.ascontiguousarray(vectors[start:start + n], dtype=np.float32)
            table = pa.table({VECTOR: _fixed(chunk)})
            if extra is not None:
                more = extra.take(len(chunk))
                if more.num_rows != len(chunk):
                    raise LoadError(f"payload {payload} has {start + more.num_rows} rows, fewer than the "
                                    f"{len(vectors)} vectors of {path}")
                for column in more.column_names:
                    if column != VECTOR:
                        table = table.append_column(column, more.column(column))
            yield table
        if extra is not None and extra.take(1).num_rows:
            raise LoadError(f"payload {payload} has more rows than the {len(vectors)} vectors of {path}")

    return Source(path, len(vectors), read)


class _PayloadRows:
    """A row-aligned payload file, taken n rows at a time."""

    def __init__(self, tables: Iterator[pa.Table]) -> None:
        self._tables = tables
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def take(self, n: int) -> pa.Table:
        while self._buffered < n:
            nxt = next(self._tables, None)
            if nxt is None:
                break
            self._buffer.append(nxt)
            self._buffered += nxt.num_rows
        if not self._buffer:
            return pa.table({})
        whole = pa.concat_tables(self._buffer, promote_options="permissive")
        head, rest = whole.slice(0, n), whole.slice(n)
        self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows
        return head


def _payload_rows(path: str, n: int) -> _PayloadRows:
    name = path.lower()
    if name.endswith(".parquet"):
        f = _parquet_file(path)
        return _PayloadRows(pa.Table.from_batches([b]) for b in f.iter_batches(batch_size=n))
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
        return _PayloadRows(_json_lines(path, n, None))
    raise LoadError(f"--payload {path}: expected JSONL (.jsonl, .jsonl.gz) or Parquet")


def _json_lines(path: str, n: int, vector_column: str | None) -> Iterator[pa.Table]:
    """Tables of n JSON lines; the vector field (when named) becomes the vector column."""
    rows: list[dict[str, Any]] = []
    line_no = 0
    with _open(path) as stream:
        for line in _lines(stream):
            line_no += 1
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise LoadError(f"{path}, line {line_no}: not JSON ({exc})") from exc
            if not isinstance(doc, dict):
                raise LoadError(f"{path}, line {line_no}: expected a JSON object")
            rows.append(doc)
            if len(rows) == n:
                yield _json_table(rows, vector_column, path)
                rows = []
    if rows:
        yield _json_table(rows, vector_column, path)


def _json_table(rows: list[dict[str, Any]], vector_column: str | None, path: str) -> pa.Table:
    if vector_column is None:
        return pa.Table.from_pylist(rows)
    try:
        vectors = np.asarray([r.pop(vector_column) for r in rows], dtype=np.float32)
    except KeyError as exc:
        raise LoadError(f"{path}: a line has no '{vector_column}' field (--vector-column names it)") from exc
    except ValueError as exc:
        raise LoadError(f"{path}: '{vector_column}' values must be lists of numbers of one length") from exc
    table = pa.Table.from_pylist(rows) if rows and rows[0] else pa.table({})
    return _prepend_vectors(table, vectors, path)


def _jsonl_tables(path: str, vector_column: str, n: int) -> Iterator[pa.Table]:
    return _json_lines(path, n, vector_column)


def _csv_tables(path: str, vector_column: str, n: int) -> Iterator[pa.Table]:
    with _open(path) as stream:
        reader = pacsv.open_csv(stream, convert_options=pacsv.ConvertOptions(column_types={vector_column: pa.string()}))
        for batch in reader:
            table = pa.Table.from_batches([batch])
            if vector_column not in table.column_names:
                raise LoadError(f"{path}: no '{vector_column}' column (--vector-column names it)")
            texts = table.column(vector_column).to_pylist()
            try:
                vectors = np.asarray([orjson.loads(t) for t in texts], dtype=np.float32)
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                raise LoadError(f"{path}: column '{vector_column}' must hold JSON arrays of numbers of one "
                                "length, like [0.1, 0.2]") from exc
            yield _prepend_vectors(table.drop_columns([vector_column]), vectors, path)


def _with_vectors(table: pa.Table, vector_column: str, path: str) -> pa.Table:
    """A table whose vector column (any list of numbers) becomes fixed-size float32 `vector`, first."""
    if vector_column not in table.column_names:
        raise LoadError(f"{path}: no '{vector_column}' column (--vector-column names it); "
                        f"columns: {', '.join(table.column_names)}")
    column = table.column(vector_column).combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise LoadError(f"{path}: column '{vector_column}' is {kind}, not a list of numbers")
    if pa.types.is_fixed_size_list(kind):
        dimension = kind.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        dimension = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != dimension).any():
            raise LoadError(f"{path}: vectors of column '{vector_column}' differ in length")
    if column.null_count:
        raise LoadError(f"{path}: column '{vector_column}' has a null row")
    values = column.flatten().cast(pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(values, dimension) if dimension else column
    rest = table.drop_columns([vector_column])
    return pa.Table.from_arrays([vectors, *rest.columns], names=[VECTOR, *rest.column_names])


def _prepend_vectors(table: pa.Table, vectors: np.ndarray, path: str) -> pa.Table:
    if vectors.ndim != 2:
        raise LoadError(f"{path}: vectors must be lists of numbers of one length")
    if VECTOR in table.column_names:
        table = table.drop_columns([VECTOR])
    return pa.Table.from_arrays([_fixed(vectors), *table.columns], names=[VECTOR, *table.column_names])


def _fixed(vectors: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def _rebatch(tables: Iterator[pa.Table], skip: int, n: int) -> Iterator[pa.Table]:
    """Tables of exactly n rows (the last one fewer), the first `skip` rows dropped."""
    buffer: list[pa.Table] = []
    held = 0
    for table in tables:
        if skip:
            dropped = min(skip, table.num_rows)
            table, skip = table.slice(dropped), skip - dropped
        if not table.num_rows:
            continue
        buffer.append(table)
        held += table.num_rows
        while held >= n:
            whole = pa.concat_tables(buffer, promote_options="permissive")
            yield whole.slice(0, n)
            rest = whole.slice(n)
            buffer, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(buffer, promote_options="permissive")


# ---------------------------------------------------------------- the fleet


class Fleet:
    """The few calls of the native API a load needs, with errors that name the URL."""

    def __init__(self, url: str, key: str, timeout: float = 300) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        self.http.headers["x-api-key"] = key
        self.timeout = timeout

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        try:
            return self.http.request(method, self.url + path, timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise LoadError(f"no query node answers at {self.url} ({type(exc).__name__})") from exc

    def json(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> Any:
        resp = self.call(method, path, **kw)
        if resp.status_code not in ok:
            raise LoadError(f"{method} {self.url}{path} answered {resp.status_code}: {_error_text(resp)}")
        return resp.json()

    def describe(self, table: str) -> dict[str, Any] | None:
        resp = self.call("GET", f"/api/v1/tables/{table}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise LoadError(f"GET {self.url}/api/v1/tables/{table} answered {resp.status_code}: {_error_text(resp)}")
        return resp.json()


def _error_text(resp: requests.Response) -> str:
    try:
        doc = resp.json()
        return str(doc.get("error", doc)) + (f" ({doc['detail']})" if doc.get("detail") else "")
    except ValueError:
        return resp.text.strip()[:300]


def create_body(table: str, first: pa.Table, metric: str) -> dict[str, Any]:
    """The create-table body for rows like `first`: its dimension and payload columns."""
    dimension = first.schema.field(VECTOR).type.list_size
    schema = {}
    for f in first.schema:
        if f.name == VECTOR:
            continue
        type_name = PAYLOAD_TYPE_NAMES.get(f.type)
        if type_name is None:
            if pa.types.is_timestamp(f.type):
                type_name = "timestamp"
            else:
                raise LoadError(f"column '{f.name}' is {f.type}, which a table cannot hold; supported: "
                                f"{', '.join(sorted(set(PAYLOAD_TYPE_NAMES.values())))}")
        schema[f.name] = type_name
    return {"name": table, "dimension": dimension, "metric": metric, "schema": schema}


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------- progress


class Progress:
    """A tqdm bar (rows, MB/s, ETA) on a terminal; otherwise a plain line every few seconds."""

    def __init__(self, total: int | None, desc: str, stream: Any = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.desc = total, desc
        self.rows = self.bytes = 0
        self.started = self._last = time.monotonic()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rows", unit_scale=True, desc=desc, file=self.stream)

    def update(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        if self.bar is not None:
            self.bar.update(rows)
            self.bar.set_postfix_str(f"{self.mb_per_s():.1f} MB/s", refresh=False)
        elif time.monotonic() - self._last >= 2:
            self._line()

    def mb_per_s(self) -> float:
        return self.bytes / 2**20 / max(time.monotonic() - self.started, 1e-6)

    def _line(self) -> None:
        self._last = time.monotonic()
        done = f"{self.rows:,}" + (f"/{self.total:,} rows ({100 * self.rows / max(self.total, 1):.0f}%)"
                                    if self.total else " rows")
        eta = ""
        if self.total and self.rows:
            rate = self.rows / max(time.monotonic() - self.started, 1e-6)
            eta = f", ETA {max(self.total - self.rows, 0) / rate:.0f}s"
        print(f"{self.desc}: {done}, {self.mb_per_s():.1f} MB/s{eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()


# ---------------------------------------------------------------- the load


@dataclass
class Outcome:
    committed: int = 0  # rows this run committed
    first_row: int = 0  # input row this run started at
    version: int | None = None  # table version of the last acknowledged batch
    in_flight: bool = False  # an insert was sent and not acknowledged when the load stopped


def load(fleet: Fleet, table: str, inputs: list[str], *, metric: str = "cosine", vector_column: str = VECTOR,
         payload: str | None = None, batch_rows: int = 0, resume: bool = False, start_row: int = 0,
         out: Any = None, tty: bool | None = None) -> Outcome:
    """Load `inputs` into `table` (see the module). Raises LoadError or KeyboardInterrupt with `.outcome`
    set to what was committed."""
    out = out or sys.stderr
    paths = expand(inputs)
    if payload is not None and len(paths) != 1:
        raise LoadError("--payload goes with exactly one .npy file")
    sources = [source(p, vector_column, payload) for p in paths]
    info = fleet.describe(table)
    if resume:
        if start_row:
            raise LoadError("give --resume or --start-row, not both")
        start_row = info["rows"] if info else 0
        print(f"resuming: table '{table}' holds {start_row:,} rows at {fleet.url}; skipping as many input rows",
              file=out, flush=True)
    outcome = Outcome(first_row=start_row)
    known = [s.rows for s in sources]
    total = None if None in known else max(sum(known) - start_row, 0)  # type: ignore[arg-type]
    progress = Progress(total, f"loading {table}", out, tty)
    n = batch_rows or (auto_batch_rows(info["dimension"]) if info else auto_batch_rows(_dimension(sources)))
    stop = _GracefulStop(out)
    try:
        skip = start_row
        for src in sources:
            if src.rows is not None:
                if skip >= src.rows:
                    skip -= src.rows
                    continue
                batches, skip = src.read(skip, n), 0
            else:  # unknown length (JSONL, CSV): read from the start and drop the rows to skip
                batches = src.read(0, n)
            for batch in batches:
                if skip:
                    dropped = min(skip, batch.num_rows)
                    batch, skip = batch.slice(dropped), skip - dropped
                    if not batch.num_rows:
                        continue
                if info is None:
                    info = fleet.json("POST", "/api/v1/tables", ok=(201,), json=create_body(table, batch, metric))
                    print(f"created table '{table}' at {fleet.url}: dimension {info['dimension']}, "
                          f"metric {info['metric']}", file=out, flush=True)
                body = ipc_bytes(batch)
                outcome.in_flight = True  # until acknowledged: stopped now, it may be committed or not
                ack = fleet.json("POST", f"/api/v1/tables/{table}/rows", data=body,
                                 headers={"content-type": ARROW_STREAM})
                outcome.committed += batch.num_rows
                outcome.version = ack["version"]
                outcome.in_flight = False
                progress.update(batch.num_rows, len(body))
                if stop.requested:
                    raise KeyboardInterrupt
    except (LoadError, KeyboardInterrupt) as exc:
        progress.close()
        exc.outcome = outcome  # type: ignore[attr-defined]
        raise
    finally:
        stop.restore()
    progress.close()
    return outcome


class _GracefulStop:
    """The first Ctrl-C lets the insert in flight finish (so what was committed is known exactly); a second
    one stops at once."""

    def __init__(self, out: Any) -> None:
        self.requested = False
        self._out = out
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after the insert in flight (Ctrl-C again to stop at once)", file=self._out, flush=True)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _dimension(sources: list[Source]) -> int:
    """The vector dimension of the first input (from its first row)."""
    for src in sources:
        for first in src.read(0, 1):
            return first.schema.field(VECTOR).type.list_size
    raise LoadError("the input holds no rows")


def auto_batch_rows(dimension: int) -> int:
    """Rows per insert: TARGET_BATCH_BYTES of vectors, within [MIN_BATCH_ROWS, MAX_BATCH_ROWS]."""
    return max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, TARGET_BATCH_BYTES // (4 * max(dimension, 1))))


def committed_report(fleet: Fleet, table: str, outcome: Outcome) -> str:
    """What an interrupted load committed, and how to go on."""
    try:
        info = fleet.describe(table)
    except LoadError:
        info = None
    end = outcome.first_row + outcome.committed
    lines = [f"committed {outcome.committed:,} rows in this run (input rows {outcome.first_row:,} to {end:,})"
             + (f", last at table version {outcome.version}" if outcome.version is not None else "")]
    if info is not None:
        lines.append(f"table '{table}' at {fleet.url} now holds {info['rows']:,} rows at version {info['version']}")
    if outcome.in_flight:
        lines.append("an insert was in flight when the load stopped and may have been committed too: "
                     "--resume counts the table's rows, so it skips it either way")
    lines.append(f"continue with the same command and --resume (or --start-row {end})")
    return "\n".join(lines)
