"""``rkserve bench``: load a running daemon and measure what it sustains.

``load`` runs the steps (closed-loop concurrency or open-loop rate), ``report`` writes the
table, CSV and JSON, ``cli`` is the command ([docs/BENCHMARKS.md]).
"""

from __future__ import annotations

from .load import STAGES, Plan, Step, percentile, run_plan, run_step

__all__ = ["STAGES", "Plan", "Step", "percentile", "run_plan", "run_step"]
