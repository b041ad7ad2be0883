"""Index objects and manifests in storage, and the atomic publication of a new index version.

Layout under the storage root: `_appliance/indexes/<table>/objects/<uuid>.bin` (immutable, shared by the
versions that name them), `manifests/<N>.json`, and `CURRENT` holding the published version number.
Publication writes the objects, then the manifest, then moves CURRENT; a builder killed at any point
leaves CURRENT on the previous version, and what it wrote is unreferenced garbage for cleanup.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import numpy as np

from appliance.errors import ApplianceError, Conflict
from appliance.index.manifest import IndexManifest, ObjectRef
from appliance.storage import frames
from appliance.storage.blobs import BlobStore
from appliance.storage.root import StorageRoot

CURRENT = "CURRENT"


class CorruptIndexObject(ApplianceError):
    status = 500
    code = "corrupt_index_object"


def checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def encode_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> bytes:
    return frames.encode({"names": list(arrays), "meta": meta or {}}, list(arrays.values()))


def decode_arrays(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    header, arrays = frames.decode(data)
    return dict(zip(header["names"], arrays, strict=True)), header.get("meta", {})


class IndexStore:
    def __init__(self, root: StorageRoot) -> None:
        self._blobs = BlobStore(root, prefix="_appliance/indexes")

    def put_object(self, table: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None,
                   rows: int = 0) -> ObjectRef:
        data = encode_arrays(arrays, meta)
        key = f"{table}/objects/{uuid.uuid4().hex}.bin"
        self._blobs.put(key, data)
        return ObjectRef(key=key, size=len(data), checksum=checksum(data), rows=rows)

    def read_object(self, ref: ObjectRef) -> bytes:
        """The object's bytes, verified against the manifest's size and checksum."""
        data = self._blobs.get(ref.key)
        if data is None or len(data) != ref.size or checksum(data) != ref.checksum:
            raise CorruptIndexObject(f"index object {ref.key} is missing or does not match its checksum")
        return data

    def get_object(self, ref: ObjectRef) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return decode_arrays(self.read_object(ref))

    def publish(self, manifest: IndexManifest) -> None:
        """Write the manifest (create-only: a version number is never reused, so two builders cannot
        overwrite each other's manifest), then point CURRENT at it unless a newer version already is."""
        table = manifest.table
        if not self._blobs.put_if_absent(f"{table}/manifests/{manifest.index_version}.json", manifest.to_json()):
            raise Conflict(f"index version {manifest.index_version} of '{table}' was published by another build",
                           "the build's objects stay unreferenced until cleanup; build again")
        current = self.current_version(table)
        if current is None or current < manifest.index_version:
            self._blobs.put(f"{table}/{CURRENT}", str(manifest.index_version).encode())

    def current_version(self, table: str) -> int | None:
        raw = self._blobs.get(f"{table}/{CURRENT}")
        return int(raw) if raw else None

    def manifest(self, table: str, index_version: int) -> IndexManifest:
        raw = self._blobs.get(f"{table}/manifests/{index_version}.json")
        if raw is None:
            raise CorruptIndexObject(f"index manifest {table} v{index_version} is missing")
        return IndexManifest.from_json(raw)

    def current(self, table: str) -> IndexManifest | None:
        version = self.current_version(table)
        return None if version is None else self.manifest(table, version)

    def versions(self, table: str) -> list[int]:
        keys = self._blobs.list(f"{table}/manifests")
        return sorted(int(k.rsplit("/", 1)[1].split(".")[0]) for k in keys)

    def next_version(self, table: str) -> int:
        return max(self.versions(table), default=0) + 1

    def object_times(self, table: str) -> dict[str, float]:
        """Every object key of a table's index with its modification time (for cleanup)."""
        return self._blobs.list_times(f"{table}/objects")

    def delete_object(self, key: str) -> None:
        self._blobs.delete(key)

    def delete_manifest(self, table: str, index_version: int) -> None:
        """Remove an old manifest; refuses the published one, which readers start from."""
        if index_version == self.current_version(table):
            raise ValueError(f"index {table} v{index_version} is published; it cannot be deleted")
        self._blobs.delete(f"{table}/manifests/{index_version}.json")

    def drop(self, table: str) -> None:
        """Forget a table's index entirely (the table was dropped or overwritten): the pointer goes first,
        so no reader starts on objects that are about to disappear."""
        self._blobs.delete(f"{table}/{CURRENT}")
        self._blobs.delete_prefix(table)
