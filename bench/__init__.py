"""Benchmarks: each prints a table and writes it under docs/benchmarks/. Run from the repository root
as `python -m bench.NAME`."""
