"""Benchmark suites for compare.py: each module has `run(report, quick)`."""
