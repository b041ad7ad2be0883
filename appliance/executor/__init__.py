"""The plan executor: a Flask app (under gunicorn) that runs plan tasks against storage with the kernels.

Executors hold no state but caches, so any executor can run any task; routing only decides which one
runs it so that its cache is warm.
"""
