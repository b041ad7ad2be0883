"""The event queue's one interface, which every backend implements the same way.

Semantics (those of an SQS FIFO queue, so the local default and the cloud behave alike):

- `publish` is durable when it returns.
- `receive` waits up to `wait` seconds for messages and hides each one it hands out for the visibility
  timeout. A message not acknowledged by then is delivered again, so a consumer that crashes loses
  nothing; `extend` keeps a message hidden while long work on it goes on (a heartbeat).
- Messages carry a group (the table): while a message of a group is in flight, no other message of that
  group is handed out. That is the per-table lease: one indexer works on a table at a time, and when it
  dies the group frees itself after the visibility timeout.
- Each delivery counts; a message delivered `max_receives` times without an acknowledgement goes to the
  dead-letter queue on the next receive, so one poisonous event cannot stall its table forever.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from appliance.events.event import Event


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message: the event, the handle that acknowledges it, and its delivery count."""

    event: Event
    receipt: str
    receives: int
    message_id: str


@dataclass(frozen=True)
class QueueStats:
    ready: int  # visible now
    in_flight: int  # handed out, not yet acknowledged
    dead: int  # dead-lettered

    @property
    def pending(self) -> int:
        """Messages some consumer still has to handle (visible or in flight)."""
        return self.ready + self.in_flight

    def to_json(self) -> dict[str, int]:
        return {"ready": self.ready, "in_flight": self.in_flight, "dead": self.dead}


class EventQueue(abc.ABC):
    visibility_timeout: float
    max_receives: int

    @abc.abstractmethod
    def publish(self, event: Event) -> str:
        """Store the event durably; returns its message id."""

    @abc.abstractmethod
    def receive(self, max_messages: int = 1, wait: float = 0.0) -> list[Delivery]:
        """Up to `max_messages` deliveries, waiting up to `wait` seconds for the first."""

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> bool:
        """Delete a handled message; False when the delivery had already expired and was handed out again."""

    @abc.abstractmethod
    def extend(self, delivery: Delivery, seconds: float) -> bool:
        """Keep the message hidden `seconds` from now; False when this delivery no longer holds it."""

    @abc.abstractmethod
    def release(self, delivery: Delivery, delay: float = 0.0) -> bool:
        """Give a message back unhandled (a failure): visible again after `delay` seconds."""

    @abc.abstractmethod
    def stats(self) -> QueueStats:
        """Counts of ready, in-flight and dead-lettered messages (approximate on SQS)."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[Event]:
        """Events that were dead-lettered (for operators and tests); does not remove them."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the queue's contents stay."""
