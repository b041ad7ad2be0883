"""What a query node uses to announce writes and requests to the indexers.

A write is acknowledged once Lance has committed it, whether or not its event could be published: the
rows are already safe and searchable (unindexed rows are flat-scanned), and the indexer decides from the
table's state, not from the event, so the next event of the table covers rows a lost event named. So a
failed publish is logged, never raised, on the write path; explicit requests do raise, since their caller
must know that nothing will happen.
"""

from __future__ import annotations

import logging
from typing import Any

from appliance.events.event import Event
from appliance.events.queue import EventQueue, QueueStats

log = logging.getLogger("appliance.events")


class Publisher:
    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue

    def announce(self, table: str, kind: str, table_version: int) -> str | None:
        """Publish a write's event; the message id, or None when the queue could not take it."""
        try:
            return self.queue.publish(Event(table=table, kind=kind, table_version=table_version))
        except Exception:  # the write is committed; an event the queue lost is covered by the next one
            log.exception("could not publish %s event of table %s v%d", kind, table, table_version)
            return None

    def request(self, table: str, kind: str, table_version: int, action: str,
                params: dict[str, Any] | None = None) -> Event:
        """Publish an explicit request; raises when the queue cannot take it."""
        event = Event(table=table, kind=kind, table_version=table_version, action=action, params=params or {})
        self.queue.publish(event)
        return event

    def stats(self) -> QueueStats | None:
        try:
            return self.queue.stats()
        except Exception:  # stats are informative only
            log.exception("could not read the event queue's stats")
            return None
