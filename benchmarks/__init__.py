"""Benchmarks of accuracy and speed: scripts that print and record figures, run from the repository
root (python -m benchmarks.NAME --help); not installed with the package."""
