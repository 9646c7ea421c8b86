"""Timing benchmarks, runnable as modules (python -m vesselseg.benchmarks.NAME --help)."""
