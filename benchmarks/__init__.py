"""The repository's own benchmarks: ``python -m benchmarks.run`` rewrites docs/BENCHMARKS.md."""
