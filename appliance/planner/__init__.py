"""Compiles a search into a distributed plan of tasks, and the wire format tasks travel in.

Today every plan is an exact scan (one task per fragment of the pinned version); the IVF issue adds
partition tasks beside the fragment tasks without changing how tasks are routed or executed.
"""

from appliance.planner.plan import SearchPlan, SearchRequest, Task, plan_search

__all__ = ["SearchPlan", "SearchRequest", "Task", "plan_search"]
