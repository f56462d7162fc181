"""``rkserve doctor``: the board's NPU stack and the models, checked against each other."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..board.doctor import failed, render_table, run_doctor
from ..board.probes import DEFAULT_LIBRKNNRT_PATHS


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="check the board's NPU stack and the models against it (no daemon)"
    )
    p.add_argument("--root", default="/", metavar="PATH", help="the board's filesystem root")
    p.add_argument("--models", default="models", metavar="DIR", help="the model repository")
    p.add_argument(
        "--librknnrt",
        action="append",
        metavar="PATH",
        help="where to look for librknnrt.so (repeatable; default: the standard lib dirs)",
    )
    p.add_argument("--strict", action="store_true", help="treat every warning as a failure")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    paths = args.librknnrt or DEFAULT_LIBRKNNRT_PATHS
    report = run_doctor(Path(args.root), Path(args.models), paths, args.strict)
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_table(report))
    return 1 if failed(report) else 0
