"""The `wallet` command: migrate, serve, worker, verify, stats, token and run. It sits on top:
it starts the API (api/) and the worker (jobs/) on what core/ provides."""
