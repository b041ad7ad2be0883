"""The event queue between query nodes (publishers) and indexers (consumers).

Events are small notes (table, kind, table version, requested action), never customer rows. One
interface (`EventQueue`) with a durable local backend, SQLite in WAL mode (the default), and an SQS FIFO
backend for the cloud; both give at-least-once delivery, redelivery after a visibility timeout, one
consumer per table at a time (message groups), and a dead-letter queue after `max_receives` deliveries.
"""

from appliance.events.event import ACTIONS, KINDS, Event
from appliance.events.factory import open_queue, queue_location
from appliance.events.queue import Delivery, EventQueue, QueueStats

__all__ = ["ACTIONS", "KINDS", "Delivery", "Event", "EventQueue", "QueueStats", "open_queue", "queue_location"]
