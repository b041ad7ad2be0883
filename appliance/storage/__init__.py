"""The only code that talks to object storage: the storage root, Lance tables and immutable blobs.

Callers name tables and blob keys; this package turns them into URIs under the root, so switching the
root from a local folder to `s3://bucket/prefix` changes no caller.
"""

from appliance.storage.blobs import BlobStore
from appliance.storage.root import StorageRoot
from appliance.storage.tables import TableInfo, TableStore

__all__ = ["BlobStore", "StorageRoot", "TableInfo", "TableStore"]
