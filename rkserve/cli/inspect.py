"""``rkserve inspect``: what a ``.rknn`` file holds, without a runtime."""

from __future__ import annotations

import argparse
import json
import sys

from ..board.rknnfile import describe, read_rknn
from ..board.rknnops import custom_ops, describe_custom
from ..errors import RkserveError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print the metadata of .rknn files: inputs, outputs, versions, custom ops "
        "(no runtime needed)",
    )
    p.add_argument("files", nargs="+", metavar="FILE.rknn")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    found, failed = [], False
    for path in args.files:
        try:
            info = read_rknn(path)
        except RkserveError as exc:
            print(f"rkserve inspect: error: {exc}", file=sys.stderr)
            failed = True
            continue
        ops = custom_ops(path)
        found.append({**info.to_dict(), "custom_ops": list(ops)})
        if not args.json:
            custom = f"\n  custom ops       {describe_custom(ops)}"
            print(describe(info) + custom + "\n", flush=True)
    if args.json:
        print(json.dumps(found, indent=2))
    return 1 if failed else 0
