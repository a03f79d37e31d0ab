"""Benchmarks of relayllm against the raw engines: edge (edge.py), cloud (cloud.py), the driver (cli.py)."""
