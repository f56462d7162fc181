"""Development tools run from the repository root with ``python -m tools.…``; not installed.

``demo``: the synthetic-shapes images and the training of the demo models; ``zoo``: the model
zoo's reference post-processing, loaded from ``../shared/reference`` as a test oracle;
``harness``: the real daemon in a subprocess, for the tests and the benchmarks.
"""
