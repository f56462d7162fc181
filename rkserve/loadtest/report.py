"""``rkserve bench`` results: a table as steps finish, CSV and JSON files, and the machine
they were measured on (figures are only comparable on the same machine, in the same run)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .load import STAGES, Plan, Step

COLUMNS = (
    "concurrency",
    "rate",
    "requests",
    "ok",
    "errors",
    "error_codes",
    "seconds",
    "throughput_rps",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "latency_max_ms",
    *(f"server_{stage}_ms" for stage in STAGES),
    "client_cpu_cores",
    "send_lag_p99_ms",
)


def machine_info() -> Dict[str, str]:
    """Where the figures were measured: CPU, cores, Python and the libraries on the hot path."""
    import cv2
    import msgpack
    import zmq

    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
        "msgpack": ".".join(str(v) for v in msgpack.version),
    }


def cpu_model(root: Path = Path("/")) -> str:
    """The CPU's model name (x86), or the board's model and cores (Arm)."""
    try:
        text = (root / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    try:
        board = (root / "proc/device-tree/model").read_text(errors="replace").strip("\0\n ")
    except OSError:
        board = ""
    return board or platform.machine() or "unknown"


def describe_plan(plan: Plan) -> str:
    what = (
        f"open loop at {', '.join(f'{r:g}' for r in plan.rates)} req/s"
        if plan.rates
        else f"concurrency {', '.join(str(c) for c in plan.concurrency)}"
    )
    per = f"{plan.requests} requests" if plan.requests else f"{plan.duration:g} s"
    return (
        f"rkserve bench: {plan.model} at {', '.join(plan.endpoints)}; {what}; "
        f"{per} per step after {plan.warmup:g} s warm-up; {len(plan.inputs)} input(s)"
    )


_TABLE = (
    ("conc", 5),
    ("rate", 7),
    ("reqs", 7),
    ("errors", 7),
    ("req/s", 8),
    ("p50", 8),
    ("p90", 8),
    ("p99", 8),
    ("queue", 7),
    ("decode", 7),
    ("pre", 7),
    ("infer", 7),
    ("post", 7),
    ("server", 7),
    ("cpu", 5),
)


def table_header() -> str:
    head = "".join(name.rjust(width) for name, width in _TABLE)
    widths = [width for _, width in _TABLE]
    under = (
        " " * sum(widths[:5])
        + "client latency, ms".center(sum(widths[5:8]))
        + "daemon, mean ms".center(sum(widths[8:14]))
    )
    return head + "\n" + under.rstrip()


def table_row(step: Step) -> str:
    lat, srv = step.latency_ms, step.server_ms
    cells = [
        str(step.concurrency),
        f"{step.rate:g}" if step.rate else "-",
        str(step.requests),
        str(step.requests - step.ok),
        f"{step.throughput:.1f}",
        *(_ms(lat.get(k)) for k in ("p50", "p90", "p99")),
        *(_ms(srv.get(s)) for s in STAGES),
        f"{step.client_cpu:.2f}",
    ]
    line = "".join(cell.rjust(width) for cell, (_, width) in zip(cells, _TABLE))
    if step.errors:
        line += "  " + error_codes(step)
    return line


def _ms(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def error_codes(step: Step) -> str:
    return ";".join(f"{code}={count}" for code, count in sorted(step.errors.items()))


def csv_row(step: Step) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "concurrency": step.concurrency,
        "rate": step.rate if step.rate else "",
        "requests": step.requests,
        "ok": step.ok,
        "errors": step.requests - step.ok,
        "error_codes": error_codes(step),
        "seconds": round(step.seconds, 4),
        "throughput_rps": round(step.throughput, 3),
        "client_cpu_cores": round(step.client_cpu, 3),
        "send_lag_p99_ms": round(step.send_lag_ms, 3),
    }
    for key, ms in step.latency_ms.items():
        row[f"latency_{key}_ms"] = "" if math.isnan(ms) else round(ms, 3)
    for stage in STAGES:
        mean = step.server_ms.get(stage)
        row[f"server_{stage}_ms"] = "" if mean is None else round(mean, 3)
    return row


def write_csv(path: Path, steps: Sequence[Step]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for step in steps:
            writer.writerow(csv_row(step))


def write_json(path: Path, plan: Plan, steps: Sequence[Step]) -> None:
    document = {
        "machine": machine_info(),
        "plan": {
            "endpoints": list(plan.endpoints),
            "model": plan.model,
            "inputs": [_describe(i) for i in plan.inputs],
            "params": plan.params,
            "concurrency": list(plan.concurrency),
            "rates": list(plan.rates),
            "duration_s": plan.duration,
            "requests": plan.requests,
            "warmup_s": plan.warmup,
        },
        "steps": [_step_json(s) for s in steps],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _step_json(step: Step) -> Dict[str, Any]:
    row = csv_row(step)
    return {
        "concurrency": step.concurrency,
        "rate": step.rate,
        "requests": step.requests,
        "ok": step.ok,
        "errors": dict(step.errors),
        "seconds": row["seconds"],
        "throughput_rps": row["throughput_rps"],
        "latency_ms": {k: (None if math.isnan(v) else v) for k, v in step.latency_ms.items()},
        "server_ms": dict(step.server_ms),
        "client_cpu_cores": row["client_cpu_cores"],
        "send_lag_p99_ms": row["send_lag_p99_ms"],
    }


def _describe(fields: Dict[str, Any]) -> Dict[str, Any]:
    if "image" in fields:
        return {"image_bytes": len(fields["image"])}
    if "inputs" in fields:
        return {"inputs": [{k: t[k] for k in t if k != "data"} for t in fields["inputs"]]}
    return {"tensor_shape": fields["tensor"]["shape"]}


CPU_STAGES = ("decode", "preprocess", "postprocess")


def throughput_bound(step: Step, cores: int, instances: int = 1) -> Optional[str]:
    """The most a board can serve of what this step sent: ``min(instances / t_npu,
    cores / t_cpu)``, t_npu the daemon's ``inference`` time and t_cpu its CPU stages
    (decode + preprocess + postprocess), means from the replies. Read it off an
    uncontended step (concurrency 1): under load the stages' times include waiting for a
    core. The daemon's own per-request work outside the stages (parsing, hand-offs,
    the reply) is not in t_cpu, so the CPU side is an upper bound."""
    t_npu = step.server_ms.get("inference", 0.0)
    t_cpu = sum(step.server_ms.get(stage, 0.0) for stage in CPU_STAGES)
    if t_npu <= 0 or t_cpu <= 0:
        return None
    npu, cpu = instances * 1000.0 / t_npu, cores * 1000.0 / t_cpu
    limit = "NPU" if npu <= cpu else "CPU"
    return (
        f"bound from concurrency {step.concurrency}: min({instances} / {t_npu:.1f} ms NPU, "
        f"{cores} cores / {t_cpu:.1f} ms CPU stages) = min({npu:.1f}, {cpu:.1f}) = "
        f"{min(npu, cpu):.1f} req/s ({limit}-bound)"
    )
