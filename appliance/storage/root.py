"""Where the storage root is, how to reach it, and with which object-store options.

A root is a local folder or a URI (`s3://bucket/prefix`, `gs://...`, `az://...`). Options are given once,
in Lance's object-store names (`aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
`aws_session_token`, `allow_http`, ...), and handed to both readers of the root: Lance (tables) and
pyarrow's filesystem (index objects, keys, listings). With no options both fall back to the standard
environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, the credential
chain; `GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_ACCOUNT_NAME`/`_KEY`), so every process of a fleet
reaches the same store the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from appliance.errors import Unavailable

S3_RETRY_ATTEMPTS = 5
"""Attempts per S3 request (exponential backoff between them) on throttling and transient errors."""
S3_CONNECT_TIMEOUT = 5.0
S3_REQUEST_TIMEOUT = 30.0
LANCE_TIMEOUTS = {"connect_timeout": "5s", "timeout": "30s"}
"""Lance's object store retries transient errors itself (with backoff); these bound each attempt."""


def parse_options(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """`key=value,key=value` (or a mapping) -> dict; keys lower-cased as Lance expects them."""
    if not text:
        return {}
    if isinstance(text, Mapping):
        return {str(k).lower(): str(v) for k, v in text.items()}
    options = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"storage option {item!r} is not key=value")
        options[key.strip().lower()] = value.strip()
    return options


@dataclass(frozen=True)
class StorageRoot:
    """A storage root URI, normalised: local paths become absolute so every process agrees on them."""

    uri: str
    options: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def parse(cls, data: str, options: str | Mapping[str, str] | None = None) -> StorageRoot:
        parsed = urlparse(data)
        if parsed.scheme in ("", "file"):
            local = Path(parsed.path if parsed.scheme == "file" else data).expanduser().resolve()
            return cls(str(local))
        return cls(data.rstrip("/"), tuple(sorted(parse_options(options).items())))

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    @property
    def scheme(self) -> str:
        return "file" if self.is_local else urlparse(self.uri).scheme

    def join(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def lance_options(self) -> dict[str, str] | None:
        """storage_options for Lance: the configured ones plus request timeouts; None for a local root."""
        if self.is_local:
            return None
        return {**LANCE_TIMEOUTS, **dict(self.options)}

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root's path inside it (for blobs and listings)."""
        if self.is_local:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            return pafs.LocalFileSystem(), self.uri
        if self.scheme in ("s3", "s3a"):
            parsed = urlparse(self.uri)
            return _s3_filesystem(dict(self.options)), f"{parsed.netloc}{parsed.path}".rstrip("/")
        return pafs.FileSystem.from_uri(self.uri)

    def check_reachable(self) -> None:
        """Raise Unavailable, saying what is wrong, unless the root's bucket exists and can be listed (the
        start-up check and the readiness probe)."""
        try:
            fs, path = self.filesystem()
            if not self.is_local:
                bucket = path.split("/", 1)[0]
                if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise Unavailable(f"storage root {self.uri}: bucket '{bucket}' does not exist",
                                      "create it first, or point APPLIANCE_DATA at an existing one")
            fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except Unavailable:
            raise
        except Exception as exc:  # any backend error means "cannot serve"; its text names the cause
            raise Unavailable(f"storage root {self.uri} is not reachable", _first_line(exc)) from exc


def _s3_filesystem(options: dict[str, str]) -> pafs.S3FileSystem:
    """pyarrow's S3 client configured from the same options Lance gets (else from the environment), with
    bounded retries with backoff and timeouts so a throttled or unreachable store fails clearly."""
    endpoint = options.get("aws_endpoint") or options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, object] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_RETRY_ATTEMPTS),
        "connect_timeout": S3_CONNECT_TIMEOUT,
        "request_timeout": S3_REQUEST_TIMEOUT,
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = options.get("aws_region") or options.get("region")
    if region:
        kwargs["region"] = region
    if options.get("aws_access_key_id"):
        kwargs["access_key"] = options["aws_access_key_id"]
        kwargs["secret_key"] = options.get("aws_secret_access_key", "")
        if options.get("aws_session_token"):
            kwargs["session_token"] = options["aws_session_token"]
    return pafs.S3FileSystem(**kwargs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
