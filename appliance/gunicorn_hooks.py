"""gunicorn configuration hooks of every node the launcher starts (`-c python:appliance.gunicorn_hooks`).

The master makes the state its workers share (appliance/node_state.py) before it forks them, so a node
with several workers drains as one and its workers see each other's writes at once.
"""

from __future__ import annotations

from typing import Any

from appliance import node_state


def on_starting(server: Any) -> None:
    node_state.create_shared(server.cfg.workers)
