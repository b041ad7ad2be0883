"""The query node <-> executor wire format: task batches and their results travel as frames."""

from appliance.storage.frames import FrameError as WireError
from appliance.storage.frames import decode, encode

CONTENT_TYPE = "application/x-appliance-tasks"

__all__ = ["CONTENT_TYPE", "WireError", "decode", "encode"]
