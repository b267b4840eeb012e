"""Benchmarks of chatkit-gateway; `python -m bench` (or `make bench`) runs them and writes docs/BENCHMARKS.md."""
