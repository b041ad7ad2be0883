"""The query node: the public HTTP API, query planning, dispatch to executors, merge and payload fetch.

Handlers are thin: they parse a request into the service's terms and render its answer. The service
(`service.py`: the QueryService, and the `Table` handle it hands out per table and version) does the work,
so a second front (the LanceDB-compatible protocol) reuses it unchanged.
"""
