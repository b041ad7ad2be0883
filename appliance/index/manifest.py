"""The index manifest: everything a reader needs, naming every object with its size and checksum."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 2  # 2: cosine partitions hold unit vectors


@dataclass(frozen=True)
class ObjectRef:
    key: str
    size: int
    checksum: str  # blake2b-128 hex of the object's bytes, verified on every read
    rows: int = 0


@dataclass(frozen=True)
class IndexManifest:
    """One published version of a table's IVF index.

    `row_id_watermark` is why the index survives compaction: the table uses stable row ids, which Lance
    hands out in increasing order, so every row with an id below the watermark was indexed (or deleted
    since), whatever fragment compaction has moved it to, and every row at or above it was not.
    """

    table: str
    index_version: int
    metric: str
    dimension: int
    codec: str
    params: dict[str, Any]
    table_version: int
    row_id_watermark: int
    rows: int
    trained_rows: int
    centroids: ObjectRef
    partitions: list[list[ObjectRef]]
    created_at: float
    build_seconds: float
    kind: str  # "full" (centroids trained) or "partial" (deltas appended to the previous version)
    format: int = FORMAT_VERSION
    history: list[int] = field(default_factory=list)  # index versions this one extends, oldest first
    generation: int = 0  # the table generation it indexes (store.py: an overwrite starts a new one)
    requested: dict[str, Any] | None = None  # the user's explicit {"params", "metric"}; rebuilds reuse them
    # what the full build measured on rows of the table (index/tuning.py): target_recall, nprobes (the
    # smallest reaching it on the sample), sample_recall, and min_nprobes, the probe count searches are
    # raised to (0 when the user fixed nprobes); graph codecs add ef (the smallest breadth reaching it through
    # the graphs), ef_sample_recall, ef_recalls (the ladder) and min_ef, the ef searches are raised to (0 when
    # the user fixed ef); partial builds keep it
    recall: dict[str, Any] | None = None

    @property
    def min_nprobes(self) -> int:
        return int((self.recall or {}).get("min_nprobes", 0))

    @property
    def min_ef(self) -> int:
        return int((self.recall or {}).get("min_ef", 0))

    @property
    def nlist(self) -> int:
        return len(self.partitions)

    def objects(self) -> list[ObjectRef]:
        return [self.centroids, *(ref for refs in self.partitions for ref in refs)]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> IndexManifest:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported index manifest format {doc.get('format')!r}")
        doc["centroids"] = ObjectRef(**doc["centroids"])
        doc["partitions"] = [[ObjectRef(**ref) for ref in refs] for refs in doc["partitions"]]
        return cls(**doc)

    def describe(self) -> dict[str, Any]:
        """What an operator wants to see of an index (no object lists)."""
        return {
            "index_version": self.index_version,
            "codec": self.codec,
            "metric": self.metric,
            "nlist": self.nlist,
            "params": self.params,
            "table_version": self.table_version,
            "indexed_rows": self.rows,
            "trained_rows": self.trained_rows,
            "kind": self.kind,
            "created_at": self.created_at,
            "build_seconds": round(self.build_seconds, 3),
            "bytes": sum(ref.size for ref in self.objects()),
            "generation": self.generation,
            "requested": self.requested,
            "recall": self.recall,
        }
