"""Benchmark suite: cvmigrate against rsync (daemon) and a tar|zstd pipe ceiling.

Run ``python -m bench.run`` (see bench/README.md).
"""
