"""Lance tables under the storage root.

Tables are written with stable row ids, so a row id names the same row across appends, deletions and
compaction: the executors' results and (later) the IVF index can refer to rows by id safely. Every write
returns only after Lance has committed it, which is what lets the query node acknowledge it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from appliance.errors import InvalidInput, TableExists, TableNotFound
from appliance.storage.root import StorageRoot
from appliance.storage.schema import (
    VECTOR_COLUMN,
    build_schema,
    conform,
    dimension_of,
    metric_of,
    payload_columns,
    schema_to_json,
    vectors_to_numpy,
)

TABLE_SUFFIX = ".lance"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}$")
MAX_FILTER_CHARS = 4096


@dataclass(frozen=True)
class TableInfo:
    name: str
    version: int
    rows: int
    dimension: int
    metric: str
    schema: pa.Schema
    fragments: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "rows": self.rows,
            "dimension": self.dimension,
            "metric": self.metric,
            "fragments": self.fragments,
            "schema": schema_to_json(self.schema),
        }


@dataclass(frozen=True)
class TableSnapshot:
    """One pinned version of a table: everything a query plan needs to stay on that version."""

    name: str
    dataset: lance.LanceDataset

    @property
    def version(self) -> int:
        return self.dataset.version

    @property
    def dimension(self) -> int:
        return dimension_of(self.dataset.schema)

    @property
    def metric(self) -> str:
        return metric_of(self.dataset.schema)

    @property
    def payload_columns(self) -> list[str]:
        return payload_columns(self.dataset.schema)

    def fragment_ids(self) -> list[int]:
        return [f.fragment_id for f in self.dataset.get_fragments()]

    def validate_filter(self, predicate: str) -> None:
        """Parse and type-check a filter against this version's schema without running it."""
        check_filter_text(predicate)
        try:
            self.dataset.scanner(filter=predicate, columns=[], with_row_id=True, limit=1).explain_plan()
        except (ValueError, OSError, RuntimeError) as exc:
            raise InvalidInput(f"invalid filter: {predicate}", clean_lance_message(exc)) from exc

    def take(self, row_ids: np.ndarray, columns: list[str]) -> dict[int, dict[str, Any]]:
        """Payload columns of the given rows, keyed by row id (rows deleted in this version are absent)."""
        if not len(row_ids) or not columns:
            return {int(r): {} for r in row_ids}
        table = self.dataset._take_rows(row_ids.tolist(), columns=[*columns, "_rowid"])
        ids = table.column("_rowid").to_pylist()
        rows = table.select(columns).to_pylist()
        return dict(zip(ids, rows, strict=True))


class TableStore:
    """Create, list, describe, drop, append to and delete from tables under one storage root."""

    def __init__(self, root: StorageRoot, storage_options: dict[str, str] | None = None) -> None:
        self.root = root
        self._options = storage_options or None

    def uri(self, name: str) -> str:
        check_table_name(name)
        return self.root.join(name + TABLE_SUFFIX)

    def create(self, name: str, dimension: int, metric: str, payload: Any = None) -> TableInfo:
        schema = build_schema(dimension, metric, payload)
        uri = self.uri(name)
        if self._exists(name):
            raise TableExists(name)
        try:
            lance.write_dataset(
                pa.Table.from_batches([], schema),
                uri,
                mode="create",
                enable_stable_row_ids=True,
                storage_options=self._options,
            )
        except OSError as exc:
            if "already exists" in str(exc).lower():
                raise TableExists(name) from exc
            raise
        return self.describe(name)

    def list(self) -> list[str]:
        fs, base = self.root.filesystem()
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        names = [
            info.base_name[: -len(TABLE_SUFFIX)]
            for info in infos
            if info.type == pafs.FileType.Directory and info.base_name.endswith(TABLE_SUFFIX)
        ]
        return sorted(n for n in names if _NAME.match(n))

    def snapshot(self, name: str, version: int | None = None) -> TableSnapshot:
        """Open a table at a version (latest when None), pinning it for the caller."""
        uri = self.uri(name)
        try:
            ds = lance.dataset(uri, version=version, storage_options=self._options)
        except (ValueError, OSError, FileNotFoundError) as exc:
            message = str(exc).lower()
            if version is not None and self._exists(name) and "not found" in message:
                raise InvalidInput(f"table '{name}' has no version {version}") from exc
            if "not found" in message or "does not exist" in message or "no such file" in message:
                raise TableNotFound(name) from exc
            raise
        return TableSnapshot(name=name, dataset=ds)

    def describe(self, name: str) -> TableInfo:
        snap = self.snapshot(name)
        ds = snap.dataset
        return TableInfo(
            name=name,
            version=ds.version,
            rows=ds.count_rows(),
            dimension=snap.dimension,
            metric=snap.metric,
            schema=ds.schema,
            fragments=len(ds.get_fragments()),
        )

    def drop(self, name: str) -> None:
        if not self._exists(name):
            raise TableNotFound(name)
        fs, base = self.root.filesystem()
        fs.delete_dir(f"{base}/{name}{TABLE_SUFFIX}")

    def append(self, name: str, data: pa.Table) -> int:
        """Commit rows to the table; returns the committed version (the acknowledgement's version)."""
        snap = self.snapshot(name)
        rows = conform(data, snap.dataset.schema)
        ds = lance.write_dataset(rows, self.uri(name), mode="append", storage_options=self._options)
        return ds.version

    def delete(self, name: str, predicate: str) -> tuple[int, int]:
        """Delete matching rows; returns (committed version, rows deleted)."""
        snap = self.snapshot(name)
        snap.validate_filter(predicate)
        result = snap.dataset.delete(predicate)
        deleted = int(result.get("num_deleted_rows", 0)) if isinstance(result, dict) else 0
        return snap.dataset.version, deleted

    def _exists(self, name: str) -> bool:
        fs, base = self.root.filesystem()
        return fs.get_file_info(f"{base}/{name}{TABLE_SUFFIX}").type != pafs.FileType.NotFound


def read_fragment_vectors(
    snapshot: TableSnapshot, fragment_id: int, predicate: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, float32 vectors) of one fragment's live rows, optionally only those matching a filter."""
    fragment = snapshot.dataset.get_fragment(fragment_id)
    if fragment is None:
        return np.empty(0, np.uint64), np.empty((0, snapshot.dimension), np.float32)
    table = fragment.to_table(columns=[VECTOR_COLUMN], with_row_id=True, filter=predicate)
    ids = table.column("_rowid").to_numpy().astype(np.uint64, copy=False)
    if table.num_rows == 0:
        return ids, np.empty((0, snapshot.dimension), np.float32)
    return ids, vectors_to_numpy(table.column(VECTOR_COLUMN))


def check_table_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"invalid table name {name!r}",
            "names are 1-128 characters of letters, digits, '_' and '-', not starting with '-'",
        )


def check_filter_text(predicate: Any) -> None:
    if not isinstance(predicate, str) or not predicate.strip():
        raise InvalidInput("filter must be a non-empty SQL expression string")
    if len(predicate) > MAX_FILTER_CHARS:
        raise InvalidInput(f"filter is longer than {MAX_FILTER_CHARS} characters")


def clean_lance_message(exc: BaseException) -> str:
    """Lance's messages end with the Rust source location of the build machine; clients need not see it."""
    return re.sub(r",\s*/\S+\.rs:\d+:\d+", "", str(exc)).strip()
