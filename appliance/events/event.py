"""The events the query nodes publish and the indexers consume.

An event is a small JSON note that something happened to a table (rows appended, rows deleted) or that
someone asked for work on it (build an index, optimize). It never carries customer rows: the indexer
decides what to do from the table's state in storage, so an event only says which table to look at and
why, and duplicate or lost-then-superseded events are harmless.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

# kinds: what happened
APPENDED = "appended"
DELETED = "deleted"
INDEX_REQUESTED = "index_requested"
OPTIMIZE_REQUESTED = "optimize_requested"
KINDS = (APPENDED, DELETED, INDEX_REQUESTED, OPTIMIZE_REQUESTED)

# actions: what the publisher asks the indexer for
INDEX = "index"  # bring the index up to date (partial, or full when due)
REBUILD = "rebuild"  # retrain now (a full build), whatever the growth
OPTIMIZE = "optimize"  # index, compact and clean up now
ACTIONS = (INDEX, REBUILD, OPTIMIZE)

MAX_EVENT_BYTES = 16 * 1024  # far below SQS's 256 KiB; events are notes, not data


@dataclass(frozen=True)
class Event:
    table: str
    kind: str
    table_version: int
    action: str = INDEX
    params: dict[str, Any] = field(default_factory=dict)  # index parameters of an explicit request
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown event action {self.action!r}")

    def to_json(self) -> str:
        text = json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)
        if len(text.encode()) > MAX_EVENT_BYTES:
            raise ValueError(f"event of {len(text)} bytes is over {MAX_EVENT_BYTES}; events carry no data")
        return text

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        doc = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})
