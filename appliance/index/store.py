"""Index objects and manifests in storage, and the fenced publication of a new index version.

Layout under the storage root, per table `_appliance/indexes/<table>/`: `objects/<uuid>.bin` (immutable,
shared by the versions that name them), `manifests/<N>.json` (create-only), and the pointer:
`pointers/<seq>.json`, create-only records numbered 1, 2, 3..., the highest of which is the table's index
state (the published version, or none, and the table's generation). `POINTER` holds a recent seq, a hint
that spares new readers a listing; it is only ever a lower bound.

Moving the pointer is a compare-and-swap: a writer that read record `seq` creates `seq + 1` with
put_if_absent (a hard link locally, `If-None-Match: *` on S3), so of two writers from the same record
exactly one wins, and a writer whose record is no longer the highest loses. A build reads the pointer
before it reads the table and publishes only from that record, and only within its generation: every
change that rewrites rows an index covers (overwrite, restore, an updating merge_insert, a dropped table)
starts a new generation with a record of no version, so a build of the old rows can never publish after
it. Readers keep the highest record they saw and probe for the next one: one GET per refresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.errors import ApplianceError, Conflict
from appliance.index.manifest import IndexManifest, ObjectRef
from appliance.storage import frames
from appliance.storage.blobs import BlobStore
from appliance.storage.root import StorageRoot

LEGACY_CURRENT = "CURRENT"  # before pointer records: the published version number, read if no record exists
POINTER_HINT = "POINTER"
REBASE_ATTEMPTS = 8
EXPLICIT_BUILD_TTL = 120.0  # an explicit build's claim lapses this long after its last renewal
log = logging.getLogger("appliance.index")


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


@dataclass(frozen=True)
class Pointer:
    """One pointer record: which index version a table serves (None: no index) in which generation."""

    seq: int = 0  # 0: no record yet
    version: int | None = None
    generation: int = 0
    max_version: int = 0  # the highest version ever published, so a number is never handed out twice
    requested: dict[str, Any] | None = None  # the user's explicit {"params", "metric"}, kept by rebuilds
    at: float = 0.0  # when the record was written

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Pointer:
        doc = json.loads(raw)
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


def stale_generation(table: str) -> Conflict:
    return Conflict(f"the rows of '{table}' were replaced while its index was built (overwrite, restore or an "
                    "updating merge_insert); the index of the old rows was not published", "build again")


class IndexStore:
    def __init__(self, root: StorageRoot) -> None:
        self._blobs = BlobStore(root, prefix="_appliance/indexes")
        self._pointers: dict[str, Pointer] = {}  # the highest record seen per table (records never change)
        self._lock = threading.Lock()

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

    def publish(self, manifest: IndexManifest, base: Pointer | None = None, rebase: bool = False
                ) -> IndexManifest:
        """Write the manifest (create-only: a version number is never reused, so two builders cannot
        overwrite each other's manifest), then move the pointer from `base` (the record the build started
        from; the latest when None) to it; the manifest as published. Conflict when the number is taken,
        the pointer moved since `base`, or the table's generation is not the manifest's.

        `rebase` (an explicit build): when the pointer moved within the manifest's generation (an
        indexer's build of the same rows published first), publish again from the latest record, under a
        new number, so that the build the user asked for is the one served."""
        table = manifest.table
        base = self.pointer(table) if base is None else base
        if manifest.generation != base.generation:
            raise stale_generation(table)
        if not self._blobs.put_if_absent(f"{table}/manifests/{manifest.index_version}.json", manifest.to_json()):
            raise Conflict(f"index version {manifest.index_version} of '{table}' was published by another build",
                           "the build's objects stay unreferenced until cleanup; build again")
        written = True  # whether this build wrote the manifest under its current number
        for _ in range(REBASE_ATTEMPTS):
            if written and self._advance(table, base, version=manifest.index_version,
                                         requested=manifest.requested):
                return manifest
            base = self.pointer(table)
            if base.generation != manifest.generation:
                raise stale_generation(table)
            if not rebase:
                break
            if not written or manifest.index_version <= base.max_version:  # a number above what was served
                manifest = dataclasses.replace(manifest, index_version=self.next_version(table))
                written = self._blobs.put_if_absent(f"{table}/manifests/{manifest.index_version}.json",
                                                    manifest.to_json())
        raise Conflict(f"the index of '{table}' changed while this build ran (now version {base.version})",
                       "the build's objects stay unreferenced until cleanup; build again")

    def new_generation(self, table: str, forget_choice: bool = False) -> Pointer:
        """Unpublish the table's index and start a new generation, so that no build begun before can
        publish; always succeeds (it retries against concurrent publishers). `forget_choice` also forgets
        the user's explicit index parameters (a user's drop), which otherwise rebuilds keep. Returns the
        record it replaced."""
        while True:
            base = self.pointer(table)
            if self._advance(table, base, version=None, generation=base.generation + 1,
                             requested=None if forget_choice else base.requested) is not None:
                return base

    def _advance(self, table: str, base: Pointer, **changes: Any) -> Pointer | None:
        """The compare-and-swap: create record `base.seq + 1`; None when another writer created it first."""
        version = changes.get("version", base.version)
        record = dataclasses.replace(base, seq=base.seq + 1, at=time.time(),
                                     max_version=max(base.max_version, version or 0), **changes)
        if not self._blobs.put_if_absent(f"{table}/pointers/{record.seq}.json", record.to_json()):
            return None
        self._remember(table, record)
        try:
            self._blobs.put(f"{table}/{POINTER_HINT}", str(record.seq).encode())
        except OSError:  # only a hint: readers probe past it
            log.warning("could not write the pointer hint of index %s", table, exc_info=True)
        return record

    def _remember(self, table: str, record: Pointer) -> None:
        with self._lock:
            known = self._pointers.get(table)
            if known is None or known.seq < record.seq:
                self._pointers[table] = record

    def pointer(self, table: str) -> Pointer:
        """The table's latest pointer record: the highest one seen, and any created since (one GET each,
        plus the one that finds nothing)."""
        with self._lock:
            known = self._pointers.get(table)
        if known is None:
            known = self._first_pointer(table)
        while (raw := self._blobs.get(f"{table}/pointers/{known.seq + 1}.json")) is not None:
            known = Pointer.from_json(raw)
        self._remember(table, known)
        return known

    def _first_pointer(self, table: str) -> Pointer:
        hint = self._blobs.get(f"{table}/{POINTER_HINT}")
        if hint:
            raw = self._blobs.get(f"{table}/pointers/{int(hint)}.json")
            if raw is not None:
                return Pointer.from_json(raw)
        seqs = [int(k.rsplit("/", 1)[1].split(".")[0]) for k in self._blobs.list(f"{table}/pointers")]
        if seqs:
            raw = self._blobs.get(f"{table}/pointers/{max(seqs)}.json")
            if raw is not None:
                return Pointer.from_json(raw)
        legacy = self._blobs.get(f"{table}/{LEGACY_CURRENT}")
        if legacy:  # published before pointer records: the next publication moves on from it
            return Pointer(version=int(legacy), max_version=int(legacy))
        return Pointer()

    def current_version(self, table: str) -> int | None:
        return self.pointer(table).version

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
        return max(max(self.versions(table), default=0), self.pointer(table).max_version) + 1

    @contextlib.contextmanager
    def explicit_build(self, table: str, ttl: float = EXPLICIT_BUILD_TTL) -> Iterator[None]:
        """Claim the table for an explicit build while the block runs: the indexers leave the table's
        index alone (see `explicit_builds`) until the claim is released or lapses (its holder died)."""
        key = f"{table}/builds/{uuid.uuid4().hex}.json"
        done = threading.Event()

        def renew() -> None:
            while not done.wait(ttl / 4):
                with contextlib.suppress(Exception):
                    self._blobs.put(key, b"{}")

        self._blobs.put(key, b"{}")
        renewer = threading.Thread(target=renew, name=f"claim-{table}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            with contextlib.suppress(Exception):
                self._blobs.delete(key)

    def explicit_builds(self, table: str, ttl: float = EXPLICIT_BUILD_TTL) -> int:
        """How many explicit builds of the table are running (claims renewed within `ttl`)."""
        now = time.time()
        return sum(1 for mtime in self._blobs.list_times(f"{table}/builds").values() if mtime > now - ttl)

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
        """Forget a table's index entirely (the table was dropped): a new generation first, so no reader
        starts on objects that are about to disappear and no build in flight publishes, then the objects
        and manifests. The pointer records stay (they are tiny), so a table made again under the same name
        carries on from the new generation."""
        self.new_generation(table, forget_choice=True)
        for part in ("objects", "manifests", "builds"):
            self._blobs.delete_prefix(f"{table}/{part}")
