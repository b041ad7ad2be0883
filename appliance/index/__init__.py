"""The appliance's IVF index: its on-storage format, codecs and builder: what several processes use.

No HTTP here. Query nodes, executors and indexers all use these modules (params, manifest, codec, store,
builder, tuning: the query node plans with manifests and builds on request, indexers build, executors
decode); what only one process runs lives with it (the query node's cached view of published indexes is
`appliance/query/catalog.py`, an executor's partition scan `appliance/executor/partition.py`).

The index of a table is a set of immutable objects beside the table (centroids with the codec's
parameters, partition objects, delta objects) named by a manifest; a new version becomes visible only when
its manifest is published by moving the table's CURRENT pointer, so readers never see half an index and
older versions stay readable until cleanup.
"""

from appliance.index.manifest import IndexManifest, ObjectRef
from appliance.index.params import CODECS, IndexParams
from appliance.index.store import IndexStore

__all__ = ["CODECS", "IndexManifest", "IndexParams", "IndexStore", "ObjectRef"]
