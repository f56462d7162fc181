"""The board's half of the emulated backend tests: runs steps through rkserve's rknnlite
backend and the real RKNNLite, under qemu on the emulated board.

    python3.11 tests/emulated/drive.py PLAN.json RESULTS.json

PLAN is a list of steps; each opens the backend on a model folder, runs it, closes it:

    {"name": "...", "model": FOLDER, "inputs": [NPY, ...], "runs": 1, "fail": "CALL=CODE",
     "core_mask": null, "gc_every": null, "readonly": false}

``readonly`` feeds read-only views (as a tensor request's message gives them).
``fail`` sets RKNN_STANDIN_FAIL for the step (the stand-in reads it at every call). With
``gc_every`` the step runs with the garbage collector off and a GcGuard ticking, and reports
what a full collection found afterwards. RESULTS gets, per step: ``error`` (the exception's
type and message, or null), the output files (``NAME.N.npy`` beside RESULTS), timings and
garbage counts. Each step starts with ``=== step NAME`` on stderr, so the runtime's own log
lines can be attributed to it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from rkserve.backends.rknnlite import RknnLiteBackend
from rkserve.memory import GcGuard
from rkserve.tasks import load_spec


def run_step(step: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """One step; never raises (the error is part of the result)."""
    print(f"=== step {step['name']}", file=sys.stderr, flush=True)
    os.environ["RKNN_STANDIN_FAIL"] = step.get("fail") or ""
    result: Dict[str, Any] = {"name": step["name"], "error": None, "outputs": []}
    inputs = [np.load(p) for p in step.get("inputs", [])]
    if step.get("readonly"):
        inputs = [np.frombuffer(x.tobytes(), x.dtype).reshape(x.shape) for x in inputs]
    guard = GcGuard(step["gc_every"]) if step.get("gc_every") is not None else None
    started = time.perf_counter()
    backend = None
    try:
        backend = RknnLiteBackend(load_spec(Path(step["model"])), core_mask=step.get("core_mask"))
        result["opened_s"] = time.perf_counter() - started
        if guard is not None:
            gc.collect()
            gc.disable()
        outputs: List[np.ndarray] = []
        for _ in range(step.get("runs", 1)):
            outputs = backend.run(inputs)
            if guard is not None:
                guard.tick()
        if guard is not None:
            result["collections"] = guard.collections
            result["garbage_left"] = gc.collect()  # unreachable objects the guard left
        for i, output in enumerate(outputs):
            path = out.parent / f"{step['name']}.{i}.npy"
            np.save(path, output)
            result["outputs"].append({"path": str(path), "dtype": str(output.dtype)})
    except Exception as exc:  # the result reports it; the host asserts on it
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        gc.enable()
        if backend is not None:
            backend.close()
        os.environ.pop("RKNN_STANDIN_FAIL", None)
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    plan, out = Path(sys.argv[1]), Path(sys.argv[2])
    steps = json.loads(plan.read_text(encoding="utf-8"))
    results = [run_step(step, out) for step in steps]
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
