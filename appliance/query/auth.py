"""Which API key the public API accepts.

The embedded default must work with zero configuration yet never run open: when no key is configured,
one is generated once and kept under the storage root, so every query node of the fleet (and the next
start) agrees on it, and `appliance up` prints it.
"""

from __future__ import annotations

import secrets

from appliance.config import Settings
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


def require_admin(api_key: str) -> None:
    """Who may call a query node's admin endpoints (`/admin/*`): the one place that decides. The caller
    passes the admin key (setting `admin_key`, the API key when unset), sent in x-api-key so existing
    tools (`appliance cache --api-key`) keep working."""
    require_secret(API_KEY_HEADER, api_key)
