"""Opens the event queue a setting names, so every process of a fleet agrees on one queue.

    ""                                   the default: `<data root>/_appliance/events.sqlite` (a local root)
    sqlite:///abs/path/queue.sqlite      a SQLite queue at that path
    sqs://NAME[?endpoint_url=URL&region=R]  an SQS FIFO queue (`NAME.fifo`, with `NAME-dead.fifo`)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

from appliance.events.local import SqliteQueue
from appliance.events.queue import EventQueue
from appliance.storage.root import StorageRoot

DEFAULT_FILE = "_appliance/events.sqlite"


def queue_location(events: str, data: str) -> str:
    """The queue URL a fleet uses: the setting, or the SQLite file under a local storage root."""
    if events:
        return events
    root = StorageRoot.parse(data)
    if not root.is_local:
        raise ValueError(f"storage root {data} is not local: set APPLIANCE_EVENTS (e.g. sqs://appliance-events)")
    return "sqlite://" + str(Path(root.uri) / DEFAULT_FILE)


def open_queue(events: str, data: str, visibility_timeout: float = 60.0, max_receives: int = 5) -> EventQueue:
    url = urlparse(queue_location(events, data))
    if url.scheme == "sqlite":
        return SqliteQueue(url.path, visibility_timeout, max_receives)
    if url.scheme == "sqs":
        from appliance.events.sqs import SqsQueue  # boto3 only where SQS is used

        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        return SqsQueue(url.netloc, visibility_timeout, max_receives, endpoint_url=query.get("endpoint_url"),
                        region=query.get("region"))
    raise ValueError(f"unknown event queue {events!r}: use sqlite:///path or sqs://name")
