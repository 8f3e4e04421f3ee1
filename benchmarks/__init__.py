"""Benchmarks of the job service (see README.md); run `python benchmarks/bench.py`."""
