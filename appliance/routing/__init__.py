"""Routing of search tasks to executors: consistent hashing with bounded loads.

A task key lands on the executor that caches it unless that executor would take more than its share of the
batch; which executors are alive (membership and health) lives beside the ring.
"""

from appliance.routing.ring import HashRing, NoLiveNodes

__all__ = ["HashRing", "NoLiveNodes"]
