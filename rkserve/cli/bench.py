"""``rkserve bench``: command-line arguments → a :class:`~rkserve.loadtest.load.Plan`, run it, report."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .. import protocol
from ..client import Client
from ..errors import BadRequest, UnknownModel
from ..loadtest.load import Plan, Step, run_plan
from ..loadtest.report import (
    describe_plan,
    table_header,
    table_row,
    throughput_bound,
    write_csv,
    write_json,
)
from .common import CLIENT_ENDPOINT
from .infer import read_tensor_args

CLIENT_BUSY = 0.8  # cores: above this the bench process may be what limits a step


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure a running daemon: throughput and latency per concurrency or request rate",
        description="Send requests to a running daemon in steps (a closed loop per --concurrency, "
        "or an open loop per --rate) and report per step the throughput, client latency "
        "percentiles, errors by code and the daemon's mean time per stage. "
        "A request unanswered within --timeout ends its step. Exit 1 when any request failed.",
    )
    p.add_argument(
        "--endpoint", "-e", action="append", metavar="ADDR", help="daemon address (repeatable)"
    )
    p.add_argument("--model", "-m", required=True, help="model name (see 'rkserve models')")
    given = p.add_mutually_exclusive_group()
    given.add_argument(
        "--images", nargs="+", metavar="FILE", help="image files or globs, sent in turn"
    )
    given.add_argument(
        "--tensor",
        action="append",
        nargs="?",
        const="",
        metavar="HxW|[NAME=]FILE.npy",
        help="image models: send a raw HxWx3 tensor (default: the model's input size); tensor "
        "models: one input per flag from a .npy file, or --tensor alone for random inputs of "
        "the model's shapes (the default without --images)",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="request params, e.g. mask=none (repeatable)",
    )
    p.add_argument(
        "--concurrency",
        "-c",
        default="1,2,4,8,16",
        metavar="N,N",
        help="closed-loop workers per step (default 1,2,4,8,16); with --rate: the most requests in flight",
    )
    p.add_argument("--rate", metavar="R,R", help="open loop: requests per second per step")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds measured per step (default 5)",
    )
    amount.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="requests measured per step, instead of --duration",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        metavar="S",
        help="unmeasured seconds before each step (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a reply (default 10)",
    )
    p.add_argument("--deadline-ms", type=int, metavar="MS", help="the requests' deadline_ms")
    p.add_argument(
        "--board-cores",
        type=int,
        default=4,
        metavar="N",
        help="CPU cores of the daemon's board for the throughput bound printed at the end "
        "(default 4: RK3566/RK3568; RK3588: 8)",
    )
    p.add_argument(
        "--npu-instances",
        type=int,
        default=1,
        metavar="N",
        help="runners serving the model at once for the bound (default 1; RK3588: up to 3)",
    )
    p.add_argument("--csv", metavar="FILE", help="also write one row per step as CSV")
    p.add_argument(
        "--json", metavar="FILE", help="also write the plan, the machine and the steps as JSON"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    plan = plan_from_args(args, args.endpoint or [CLIENT_ENDPOINT])
    print(describe_plan(plan), file=sys.stderr)
    print(table_header(), flush=True)
    steps = list(run_plan(plan, on_step=lambda step: print(table_row(step), flush=True)))
    for note in notes(steps):
        print(f"note: {note}", file=sys.stderr)
    bound = (
        throughput_bound(
            min(steps, key=lambda s: s.concurrency), args.board_cores, args.npu_instances
        )
        if steps
        else None
    )
    if bound:
        print(bound)
    if args.csv:
        write_csv(Path(args.csv), steps)
    if args.json:
        write_json(Path(args.json), plan, steps)
    return 0 if all(0 < step.ok == step.requests for step in steps) else 1


def notes(steps: Sequence[Step]) -> List[str]:
    """Where the bench itself, not the daemon, may have limited a step."""
    found = []
    for step in steps:
        if step.client_cpu > CLIENT_BUSY:
            found.append(
                f"at concurrency {step.concurrency} the bench process used {step.client_cpu:.2f} "
                "cores; its own GIL may limit that step (run several bench processes, or bench "
                "from another machine)"
            )
        if step.rate and step.send_lag_ms > max(1.0, 1000.0 / step.rate):
            found.append(
                f"at {step.rate:g} req/s requests left up to {step.send_lag_ms:.1f} ms late (p99): "
                f"all {step.concurrency} workers were waiting for replies; raise --concurrency "
                "to keep the rate (latencies count from when requests were due)"
            )
    return found


def plan_from_args(args: argparse.Namespace, endpoints: Sequence[str]) -> Plan:
    inputs = _inputs(args, endpoints)
    return Plan(
        endpoints=list(endpoints),
        model=args.model,
        inputs=inputs,
        params=parse_params(args.param or []),
        concurrency=parse_list(args.concurrency, int, "--concurrency"),
        rates=parse_list(args.rate, float, "--rate") if args.rate else (),
        duration=args.duration,
        requests=args.requests or 0,
        warmup=args.warmup,
        timeout=args.timeout,
        deadline_ms=args.deadline_ms,
    )


def parse_list(text: str, kind: type, flag: str) -> List[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadRequest(
            f"{flag}: expected a comma-separated list of numbers, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise BadRequest(f"{flag}: values must be positive, got {text!r}")
    return values


def parse_params(pairs: Sequence[str]) -> Dict[str, Any]:
    """``["mask=none", "top_k=3"]`` → ``{"mask": "none", "top_k": 3}`` (values read as JSON
    when they parse, else as strings)."""
    params: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadRequest(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _inputs(args: argparse.Namespace, endpoints: Sequence[str]) -> List[Dict[str, Any]]:
    if args.images:
        return [{"image": Path(p).read_bytes()} for p in expand_images(args.images)]
    values = [v for v in args.tensor or [] if v]
    if values and all(v.endswith(".npy") for v in values):
        return [{"inputs": protocol.encode_inputs(read_tensor_args(values))}]
    rng = np.random.default_rng(0)
    if values:
        height, width = parse_size(values[-1])
        return [{"tensor": protocol.encode_tensor(_pixels(rng, height, width))}]
    info = _model_info(args.model, endpoints, args.timeout)
    if "inputs" in info:  # a tensor model: random tensors of its inputs' shapes and dtypes
        tensors = [random_tensor(rng, i["shape"], i["dtype"]) for i in info["inputs"]]
        names = [str(i["name"]) for i in info["inputs"]]
        return [{"inputs": [protocol.encode_tensor(t, n) for t, n in zip(tensors, names)]}]
    height, width = info.get("input_shape", [224, 224, 3])[:2]
    return [{"tensor": protocol.encode_tensor(_pixels(rng, int(height), int(width)))}]


def _pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_tensor(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    """Uniform values over the dtype's range (integers) or [0, 1) (floats)."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        return rng.random(tuple(shape), dtype=np.float32).astype(kind)
    limits = np.iinfo(kind)
    return rng.integers(limits.min, int(limits.max) + 1, tuple(shape), dtype=kind)


def expand_images(patterns: Sequence[str]) -> List[str]:
    """Files and glob patterns → the files, in order (each pattern must match a file)."""
    found: List[str] = []
    for pattern in patterns:
        magic = any(c in pattern for c in "*?[")
        files = [
            m for m in (sorted(glob.glob(pattern)) if magic else [pattern]) if Path(m).is_file()
        ]
        if not files:
            raise BadRequest(f"--images: no image file matches {pattern!r}")
        found.extend(files)
    return found


def parse_size(text: str) -> Tuple[int, int]:
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
        raise BadRequest(f"--tensor expects HEIGHTxWIDTH, e.g. 224x224; got {text!r}")
    return int(height), int(width)


def _model_info(model: str, endpoints: Sequence[str], timeout: float) -> Dict[str, Any]:

    with Client(endpoints, timeout=timeout) as client:
        models = {m["name"]: m for m in client.models()}
    if model not in models:
        raise UnknownModel(f"no model named {model!r} (models: {', '.join(models) or 'none'})")
    return dict(models[model])
