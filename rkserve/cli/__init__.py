"""The ``rkserve`` command line: one module per sub-command, its parser beside its handler.

Each module in this package has ``add(sub)``, which adds its sub-command(s) to the parser
with the handler as ``func``; a handler takes the parsed arguments and returns the exit
code. ``main`` maps rkserve's errors to one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..errors import RkserveError
from ..version import __version__
from . import bench, convert, discover, doctor, frigate, infer, inspect, keys, serve, status

COMMANDS = (serve, infer, status, discover, inspect, doctor, convert, bench, keys, frigate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rkserve",
        description="Inference daemon for Rockchip RK3566/RK3568 NPUs, and its tools.",
    )
    parser.add_argument("--version", action="version", version=f"rkserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except RkserveError as exc:
        print(f"rkserve {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rkserve inspect ... | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # what a shell reports for a process ended by SIGPIPE
