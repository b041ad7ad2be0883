"""The query node <-> executor wire format: task batches and their results travel as frames.

A batch's header holds its tasks, k, the metric, the filter, and `timeout_ms`: the time the query node
still waits for it (appliance/deadline.py), from which the executor makes its own deadline.
"""

from appliance.storage.frames import FrameError as WireError
from appliance.storage.frames import decode, encode

CONTENT_TYPE = "application/x-appliance-tasks"
TIMEOUT_FIELD = "timeout_ms"

__all__ = ["CONTENT_TYPE", "TIMEOUT_FIELD", "WireError", "decode", "encode"]
