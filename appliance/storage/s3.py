"""What pyarrow's S3 filesystem cannot do: conditional writes, through boto3 configured like the root."""

from __future__ import annotations

import functools
import os
from typing import Any

from appliance.storage.root import S3_CONNECT_TIMEOUT, S3_REQUEST_TIMEOUT, S3_RETRY_ATTEMPTS, StorageRoot


@functools.cache
def _client(options: tuple[tuple[str, str], ...]) -> Any:
    import boto3
    from botocore.config import Config

    opts = dict(options)
    config = Config(connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_REQUEST_TIMEOUT,
                    retries={"max_attempts": S3_RETRY_ATTEMPTS, "mode": "standard"})
    return boto3.client(
        "s3",
        endpoint_url=opts.get("aws_endpoint") or opts.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=opts.get("aws_region") or opts.get("region") or None,
        aws_access_key_id=opts.get("aws_access_key_id") or None,
        aws_secret_access_key=opts.get("aws_secret_access_key") or None,
        aws_session_token=opts.get("aws_session_token") or None,
        config=config,
    )


def s3_put_if_absent(root: StorageRoot, bucket: str, key: str, data: bytes) -> bool:
    """PUT with `If-None-Match: *`: True when written, False when the key already existed (HTTP 412)."""
    from botocore.exceptions import ClientError

    try:
        _client(root.options).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise
