"""The indexer fleet: receives table events and keeps each table's IVF index, fragments and old
versions in shape, in the background and at low priority; exits when idle (scale to zero).

policy.py decides (pure), table_state.py reads what it decides from, worker.py runs builds, compaction
(compaction.py) and cleanup (cleanup.py), service.py is the APScheduler loop of one indexer process.
"""
