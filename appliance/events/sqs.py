"""The cloud event queue: an SQS FIFO queue with a dead-letter queue beside it.

FIFO because its message groups give the per-table lease for free: while a message of table T is in
flight, SQS hands out no other message of T, so two indexers never work on one table together, and when
an indexer dies the group frees itself after the visibility timeout. The dead-letter queue comes from a
redrive policy with `maxReceiveCount = max_receives`. Both queues are created when missing.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from appliance.events.event import Event
from appliance.events.queue import Delivery, EventQueue, QueueStats

MAX_WAIT = 20  # SQS long polls at most 20 s per call
MAX_VISIBILITY = 12 * 3600


class SqsQueue(EventQueue):
    def __init__(self, name: str, visibility_timeout: float = 60.0, max_receives: int = 5,
                 endpoint_url: str | None = None, region: str | None = None) -> None:
        self.visibility_timeout = float(visibility_timeout)
        self.max_receives = int(max_receives)
        base = name[:-len(".fifo")] if name.endswith(".fifo") else name
        self._sqs = boto3.client("sqs", endpoint_url=endpoint_url or None, region_name=region or "us-east-1",
                                 config=Config(retries={"max_attempts": 5, "mode": "standard"}))
        self.dead_url = self._ensure(f"{base}-dead.fifo", {})
        dead_arn = self._sqs.get_queue_attributes(QueueUrl=self.dead_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        self.url = self._ensure(f"{base}.fifo", {
            "VisibilityTimeout": str(_seconds(self.visibility_timeout)),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": self.max_receives}),
        })

    def _ensure(self, name: str, attributes: dict[str, str]) -> str:
        attrs = {"FifoQueue": "true", "ContentBasedDeduplication": "false", **attributes}
        try:
            return self._sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        except ClientError as exc:
            if _code(exc) != "QueueAlreadyExists":
                raise
            url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
            if attributes:
                self._sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
            return url

    def publish(self, event: Event) -> str:
        self._sqs.send_message(QueueUrl=self.url, MessageBody=event.to_json(), MessageGroupId=event.table,
                               MessageDeduplicationId=event.id)
        return event.id

    def receive(self, max_messages: int = 1, wait: float = 0.0) -> list[Delivery]:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            left = deadline - time.monotonic()
            resp = self._sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=max(1, min(10, max_messages)),
                WaitTimeSeconds=max(0, min(MAX_WAIT, math.floor(left))),
                VisibilityTimeout=_seconds(self.visibility_timeout),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            messages = resp.get("Messages", [])
            if messages or time.monotonic() >= deadline:
                return [_delivery(m) for m in messages]
            if left < 1:
                time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))

    def ack(self, delivery: Delivery) -> bool:
        try:
            self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=delivery.receipt)
        except ClientError as exc:
            if _code(exc) in ("ReceiptHandleIsInvalid", "InvalidParameterValue"):
                return False
            raise
        return True

    def extend(self, delivery: Delivery, seconds: float) -> bool:
        return self._change_visibility(delivery, seconds)

    def release(self, delivery: Delivery, delay: float = 0.0) -> bool:
        return self._change_visibility(delivery, delay)

    def _change_visibility(self, delivery: Delivery, seconds: float) -> bool:
        try:
            self._sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=delivery.receipt,
                                                VisibilityTimeout=_seconds(seconds))
        except ClientError as exc:
            if _code(exc) in ("ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"):
                return False
            raise
        return True

    def stats(self) -> QueueStats:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        main = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        dead = self._sqs.get_queue_attributes(QueueUrl=self.dead_url, AttributeNames=names)["Attributes"]
        return QueueStats(ready=int(main.get(names[0], 0)), in_flight=int(main.get(names[1], 0)),
                          dead=int(dead.get(names[0], 0)) + int(dead.get(names[1], 0)))

    def dead_letters(self, limit: int = 100) -> list[Event]:
        """Peek at the dead letters: received with a zero visibility timeout, so they stay where they are."""
        resp = self._sqs.receive_message(QueueUrl=self.dead_url, MaxNumberOfMessages=max(1, min(10, limit)),
                                         VisibilityTimeout=0, WaitTimeSeconds=0)
        return [Event.from_json(m["Body"]) for m in resp.get("Messages", [])]

    def close(self) -> None:
        self._sqs.close()


def _delivery(message: dict[str, Any]) -> Delivery:
    attrs = message.get("Attributes", {})
    return Delivery(Event.from_json(message["Body"]), message["ReceiptHandle"],
                    int(attrs.get("ApproximateReceiveCount", 1)), message["MessageId"])


def _seconds(value: float) -> int:
    return max(0, min(MAX_VISIBILITY, math.ceil(value)))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
