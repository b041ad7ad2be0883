"""The LRU tiering module: RAM tier -> NVMe tier -> object storage, for the executors. No HTTP here.

    cache = TieredCache(ram_bytes, folder, disk_bytes)
    with cache.pinned(key, loader, ARRAYS) as arrays:   # loader() reads object storage on a miss
        ...                                              # arrays stay cached while the block runs
"""

from appliance.cache.codec import ARRAYS, ArraysCodec, Codec
from appliance.cache.defaults import cache_folder, disk_budget, ram_budget
from appliance.cache.disk import CacheDirInUse
from appliance.cache.tiered import TieredCache

__all__ = ["ARRAYS", "ArraysCodec", "CacheDirInUse", "Codec", "TieredCache", "cache_folder", "disk_budget",
           "ram_budget"]
