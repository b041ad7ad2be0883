"""Compiles a search into a distributed plan of tasks, and the wire format tasks travel in.

A plan is an exact scan (one task per fragment of the pinned version) or an IVF search (one task per
probed partition, plus one per fragment holding rows the index lacks); tasks are routed by the key of their
group of partitions or fragments, all under one key when the work is too small to gain from fanning out.
"""

from appliance.planner.plan import SearchPlan, SearchRequest, Task, plan_search

__all__ = ["SearchPlan", "SearchRequest", "Task", "plan_search"]
