"""An S3 endpoint for tests: moto's server on a loopback port, and storage settings that point at it.

The fleet's processes reach it like a real bucket, over HTTP, with the options a user would set
(`APPLIANCE_STORAGE_OPTIONS`); nothing in the appliance knows it is talking to moto.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1"}


@dataclass(frozen=True)
class S3Endpoint:
    url: str

    @property
    def storage_options(self) -> str:
        options = {"aws_endpoint": self.url, "allow_http": "true", **CREDENTIALS}
        return ",".join(f"{k}={v}" for k, v in options.items())

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=CREDENTIALS["aws_region"],
                            aws_access_key_id=CREDENTIALS["aws_access_key_id"],
                            aws_secret_access_key=CREDENTIALS["aws_secret_access_key"])

    def new_bucket(self) -> str:
        """A fresh bucket, so tests sharing the server never see each other's tables."""
        name = f"appliance-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


class RequestCounter:
    """Counts the requests moto's server answers (by method), in place of its access log."""

    def __init__(self) -> None:
        self.by_method: Counter[str] = Counter()

    def total(self) -> int:
        return sum(self.by_method.values())


REQUESTS = RequestCounter()


def start_moto(port: int):
    """moto's S3 server in a thread of this process; `.stop()` it when done. Its requests are counted in
    `REQUESTS` instead of logged."""
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import WSGIRequestHandler

    def count(handler: WSGIRequestHandler, code: object = "-", size: object = "-") -> None:
        REQUESTS.by_method[handler.command] += 1

    WSGIRequestHandler.log_request = count
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server
