"""Connects a query node to the indexer fleet: the event queue it publishes to, the status it reports.

Kept apart from the app factory so the query node still serves when the queue cannot be opened (for
instance an s3:// root with no `APPLIANCE_EVENTS`): writes then go unannounced, and indexes are built on
request (`POST .../index`) as before. Unindexed rows are flat-scanned, so nothing is wrong, only slower.
"""

from __future__ import annotations

import logging

from appliance.config import Settings
from appliance.events import open_queue
from appliance.events.publisher import Publisher
from appliance.events.status import IndexerStatus
from appliance.query.service import QueryService
from appliance.storage.root import StorageRoot

log = logging.getLogger("appliance.query")


def attach_indexer_events(service: QueryService, settings: Settings, root: StorageRoot) -> bool:
    """Attach the fleet's event queue to `service`; False (and a warning) when there is none to attach."""
    try:
        queue = open_queue(settings.events, settings.data, settings.event_visibility_timeout,
                           settings.event_max_receives)
    except Exception as exc:  # no queue is a degraded mode, not a reason to refuse queries
        log.warning("no event queue (%s): writes will not wake the indexers", exc)
        return False
    # an indexer heartbeats every third of the visibility timeout; three missed beats mean it is gone
    service.attach_events(Publisher(queue), IndexerStatus(root), stale_after=settings.event_visibility_timeout)
    return True
