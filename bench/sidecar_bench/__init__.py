"""Helpers of bench/run_sidecar_bench.py: load generators, child services, /proc sampling, report."""
