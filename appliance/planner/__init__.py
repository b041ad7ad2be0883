"""Compiles a search into a distributed plan of tasks, and the wire format tasks travel in.

The planner is a pure function of (validated request, snapshot statistics, index); `plan.py` holds all of
it: a table version's statistics (gathered once), the planning (no storage I/O), and the wire form of task
batches and their answers. A plan is an exact scan (one task per
fragment of the pinned version) or an IVF search (one task per probed partition, plus one per fragment
holding rows the index lacks); tasks are routed by the key of their group of partitions or fragments, all
under one key when the work is too small to gain from fanning out.
"""

from appliance.planner.plan import SearchPlan, SearchRequest, SnapshotStats, Task, plan_search, snapshot_stats

__all__ = ["SearchPlan", "SearchRequest", "SnapshotStats", "Task", "plan_search", "snapshot_stats"]
