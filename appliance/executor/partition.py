"""Scanning one IVF partition on an executor: its objects (base and deltas) through a loader, then the codec.

Only executors scan partitions, so this lives with them; the index format and codecs, and a graph search's
default breadth (`params.default_ef`, which the planner uses too), are `appliance/index/`.

A graph codec's base object holds a serialised HNSW graph: it is deserialised once per object and kept,
with its ids, in an LRU here (deserialising on every search would cost more than the search; while cached
the object is not read through the loader at all, so the loader's cache lets its copy age out), and
searched with the query's `ef`. Its flat delta objects are scanned exactly, and the two
merge into one top k.

A batch of searches probes many partitions (8 queries at nprobes nlist/6 touch most of a table's share on
an executor), so flat objects are scanned SCAN_BYTES at a time and their top k merged: what one batch holds
besides the executor's cache stays bounded, however large the table (1M rows: executors with a 192 MB RAM
tier peaked at 1.2 GB, holding every object of the batch until one scan of them all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

import kernels
from appliance.index import codec
from appliance.index.manifest import IndexManifest, ObjectRef
from appliance.index.params import default_ef
from appliance.index.store import IndexStore
from appliance.lru import Lru

Loader = Callable[[ObjectRef], dict[str, np.ndarray]]
GRAPHS = 256
SCAN_BYTES = 64 * 2**20
"""Most bytes of flat partition objects one batch holds before scanning them (and letting them go)."""
"""Deserialised partition graphs kept per executor process (each as large as its object: a few hundred
KB for a partition of a thousand 384-d rows)."""


class PartitionScanner:
    """Reads manifests (small, immutable, kept in a bounded LRU) and partition objects through `load`,
    which the executor backs with its RAM/NVMe cache."""

    def __init__(self, indexes: IndexStore, load: Loader | None = None, manifests: int = 64,
                 graphs: int = GRAPHS) -> None:
        self._indexes = indexes
        self._load: Loader = load or (lambda ref: indexes.get_object(ref)[0])
        self._manifests: Lru[IndexManifest] = Lru(manifests)
        self._graphs: Lru[tuple[kernels.hnsw.Graph, np.ndarray]] = Lru(graphs)  # by object key: (graph, ids)

    def manifest(self, table: str, index_version: int) -> IndexManifest:
        return self._manifests.get_or_load((table, index_version),
                                           lambda: self._indexes.manifest(table, index_version))

    def scan(self, table: str, index_version: int, partition: int, queries: np.ndarray, k: int, ef: int = 0
             ) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids, distances) of one partition's top k for every query, and the rows scanned."""
        return self.scan_many(table, index_version, [(partition, None)], queries, k, ef)

    def scan_many(self, table: str, index_version: int, work: list[tuple[int, Sequence[int] | None]],
                  queries: np.ndarray, k: int, ef: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
        """Top k over several partitions at once, each scanned only for the queries that probe it (None:
        all): (ids, distances) [nq, k] and the rows scanned.

        A query probes tens of partitions of a few hundred rows each; `kernels.scan_lists` scans each
        object's rows for its queries only and picks the top k of all of them at once. Graph objects are
        searched with breadth `ef` (0: `default_ef`).
        """
        manifest = self.manifest(table, index_version)
        params = self._load(manifest.centroids)
        lists: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        keys: list[str] = []  # each list's object key
        graphs: list[tuple[tuple[kernels.hnsw.Graph, np.ndarray], np.ndarray | None]] = []
        prepared = codec.prepare_queries(queries, manifest.metric)
        parts, rows, held = [], 0, 0
        for partition, subset in work:
            if not 0 <= partition < manifest.nlist:
                raise ValueError(f"index {table} v{index_version} has no partition {partition}")
            chosen = None if subset is None else np.asarray(subset, dtype=np.intp)
            for ref in manifest.partitions[partition]:
                graph = self._graphs.get(ref.key)  # a cached graph needs no object read
                obj = self._load(ref) if graph is None else None
                if obj is not None and "graph" in obj:
                    graph = (kernels.hnsw_load(obj["graph"]), obj["ids"])
                    self._graphs.put(ref.key, graph)
                if graph is not None:
                    if len(graph[1]):
                        graphs.append((graph, chosen))
                elif len(obj["ids"]):
                    lists.append((obj["ids"], obj["codes"], chosen))
                    keys.append(ref.key)
                    held += obj["ids"].nbytes + obj["codes"].nbytes
                    if held >= SCAN_BYTES:  # scan what is held, keep its top k, let the objects go
                        parts.append(codec.scan(codec.row_codec(manifest.codec), prepared, lists, params,
                                                manifest.metric, k, keys))
                        rows += sum(len(ids) for ids, _, _ in lists)
                        lists, keys, held = [], [], 0
        rows += sum(len(ids) for ids, _, _ in lists) + sum(len(ids) for (_, ids), _ in graphs)
        if lists or not (graphs or parts):
            parts.append(codec.scan(codec.row_codec(manifest.codec), prepared, lists, params, manifest.metric, k,
                                    keys))
        if graphs:
            parts.append(self._search_graphs(graphs, prepared, k, ef or default_ef(k)))
        ids, dists = kernels.merge_topk(parts, k) if len(parts) > 1 else parts[0]
        return ids, dists, rows

    def _search_graphs(self, graphs: list[tuple[tuple[kernels.hnsw.Graph, np.ndarray], np.ndarray | None]],
                       prepared: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k over graph objects, each searched for its queries only: every graph's per-query top k,
        then one sort by (query, distance, id) and the first k of each query."""
        nq = len(prepared)
        rows_of, ids_of, dists_of = [], [], []
        for (graph, graph_ids), chosen in graphs:
            rows = np.arange(nq, dtype=np.intp) if chosen is None else chosen
            if not len(rows):
                continue
            ids, dists = codec.search_graph(graph, prepared[rows], graph_ids, k, ef)
            rows_of.append(np.repeat(rows, k))
            ids_of.append(ids.ravel())
            dists_of.append(dists.ravel())
        out_ids = np.full((nq, k), kernels.NO_ID, dtype=np.uint64)
        out_d = np.full((nq, k), np.inf, dtype=np.float32)
        if not rows_of or k == 0:
            return out_ids, out_d
        q, ids, dists = np.concatenate(rows_of), np.concatenate(ids_of), np.concatenate(dists_of)
        order = np.lexsort((ids, dists, q))
        q, ids, dists = q[order], ids[order], dists[order]
        starts = np.searchsorted(q, np.arange(nq))
        rank = np.arange(len(q)) - starts[q]
        keep = rank < k
        out_ids[q[keep], rank[keep]] = ids[keep]
        out_d[q[keep], rank[keep]] = dists[keep]
        return out_ids, out_d
