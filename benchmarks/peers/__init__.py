"""Peer job queues measured beside the service in the same run (opt-in: `bench.py --peers`).

`phase.py` runs in the project's venv; `driver.py` and the `*_peer` adapters run inside each
peer's own venv under benchmarks/.peers/, so this package must import nothing else on load.
"""
