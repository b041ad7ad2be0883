"""kernels: the compute layer of the appliance: distances, top-k selection and exact block search.

Everything here is pure computation on numpy arrays, with no I/O and no dependency on `appliance`, so
that each kernel can be swapped for a faster implementation behind the same signatures. Today that is
the CPU through numpy's BLAS; SIMD dispatch and CUDA kernels come later.
"""

from kernels.distance import METRICS, pairwise_distances
from kernels.threads import set_thread_budget
from kernels.topk import NO_ID, merge_topk, search_block, topk

__all__ = ["METRICS", "NO_ID", "merge_topk", "pairwise_distances", "search_block", "set_thread_budget", "topk"]
