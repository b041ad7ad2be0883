"""kernels: the compute layer of the appliance: distances, top-k, IVF training and probing, codecs.

Everything here is pure computation on arrays, with no I/O and no dependency on `appliance`. Each kernel
is written once against the array module (numpy on the CPU, cupy on a CUDA GPU; see `kernels.backend`),
and the CPU route is numpy's BLAS for the matrix products plus faiss where it was measured faster
(`kernels.cpu_faiss.OPS`). `python -m kernels info` reports what the running process uses, op by op.
"""

import os

# faiss's OpenMP threads (libgomp reads this once, when faiss loads) sleep while they wait instead of
# spinning 300,000 times first: a 2-thread k-means (256,000 x 128, 1,000 centroids) on 2 cores shared with
# other processes took 16-18 s of CPU spinning and 10 s sleeping, as long either way (a 1-thread one: 9 s).
# The environment's own setting wins; a single-thread budget (the executors', the indexers') has no team.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kernels.backend import cuda_available, resolve  # noqa: E402 - after the OpenMP setting above
from kernels.codecs import fp16_decode, fp16_encode, sq8_decode, sq8_encode, sq8_train
from kernels.distance import METRICS, pairwise_distances
from kernels.hnsw import hnsw_build, hnsw_load, hnsw_search
from kernels.ivf import assign, kmeans, probe
from kernels.pq import pq4_pack, pq4_unpack, pq_decode, pq_distances, pq_encode, pq_train
from kernels.refine import candidate_distances
from kernels.scan import CODECS, code_distances, scan_lists, search_codes
from kernels.threads import set_thread_budget
from kernels.topk import NO_ID, merge_topk, search_block, topk

__all__ = [
    "CODECS", "METRICS", "NO_ID", "assign", "candidate_distances", "code_distances", "cuda_available",
    "fp16_decode", "fp16_encode", "hnsw_build", "hnsw_load", "hnsw_search",
    "kmeans", "merge_topk", "pairwise_distances", "pq4_pack", "pq4_unpack", "pq_decode", "pq_distances",
    "pq_encode", "pq_train", "probe", "resolve", "scan_lists", "search_block", "search_codes", "set_thread_budget",
    "sq8_decode", "sq8_encode", "sq8_train", "topk",
]
