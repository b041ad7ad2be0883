"""The appliance's services: query nodes, plan executors and (later) indexers over Lance tables.

No maths lives here: every distance, top-k and codec is in the top-level `kernels` package.
"""

__version__ = "0.1.0"
