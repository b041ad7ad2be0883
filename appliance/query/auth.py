"""Which API key the public API accepts.

The embedded default must work with zero configuration yet never run open: when no key is configured,
one is generated once and kept under the storage root, so every query node of the fleet (and the next
start) agrees on it, and `appliance up` prints it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from flask import request

from appliance.config import Settings
from appliance.errors import Unauthorized
from appliance.storage.blobs import BlobStore
from appliance.web import require_secret

API_KEY_BLOB = "api_key"
API_KEY_HEADER = "x-api-key"


def resolve_api_key(settings: Settings, blobs: BlobStore) -> str:
    if settings.api_key:
        return settings.api_key
    stored = blobs.get(API_KEY_BLOB)
    if stored:
        return stored.decode().strip()
    key = "sk-" + secrets.token_urlsafe(24)
    blobs.put(API_KEY_BLOB, key.encode())
    return key


HASH_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    """The line an API keys file holds for `key` (`appliance hash-key KEY` prints it): a file of hashes can
    be shared with the hosts that check keys without revealing a single key."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def read_key_hashes(path: str) -> list[bytes]:
    """Digests from an API keys file: one `sha256:<hex>` per line, optionally followed by a name; blank
    lines and `#` comments are skipped. A malformed line stops start-up rather than silently locking
    someone out."""
    digests = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        entry = line.split("#", 1)[0].strip().split()
        if not entry:
            continue
        value = entry[0]
        digest = value[len(HASH_PREFIX):] if value.startswith(HASH_PREFIX) else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}:{number}: expected 'sha256:<64 hex digits> [name]'")
        digests.append(bytes.fromhex(digest))
    return digests


class ApiKeys:
    """The keys the public API accepts: the configured (or generated) key, plus any hashed keys from
    `api_keys_file`. Every stored digest is compared, in constant time, whatever matches first."""

    def __init__(self, plain: str, hashes: list[bytes]) -> None:
        self._plain = plain
        self._hashes = hashes

    def require(self) -> None:
        supplied = request.headers.get(API_KEY_HEADER, "")
        if not supplied:
            raise Unauthorized(f"missing {API_KEY_HEADER} header")
        digest = hashlib.sha256(supplied.encode()).digest()
        ok = hmac.compare_digest(supplied.encode(), self._plain.encode()) if self._plain else False
        for stored in self._hashes:
            ok |= hmac.compare_digest(digest, stored)
        if not ok:
            raise Unauthorized(f"invalid {API_KEY_HEADER}")


def require_admin(api_key: str) -> None:
    """Who may call a query node's admin endpoints (`/admin/*`): the one place that decides. The caller
    passes the admin key (setting `admin_key`, the API key when unset), sent in x-api-key so existing
    tools (`appliance cache --api-key`) keep working."""
    require_secret(API_KEY_HEADER, api_key)
