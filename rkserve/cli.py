"""The ``rkserve`` command line: one sub-command per job.

Each sub-command is added by an ``_add_<name>(sub)`` function below and runs a
``_cmd_<name>(args) -> int`` function; heavy imports happen inside the command.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import __version__
from .cli_daemon import add_client_commands, add_serve
from .errors import RkserveError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rkserve",
        description="Inference daemon for Rockchip RK3566/RK3568 NPUs, and its tools.",
    )
    parser.add_argument("--version", action="version", version=f"rkserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        add_serve,
        add_client_commands,
        _add_inspect,
        _add_doctor,
        _add_convert,
        _add_bench,
        _add_keys,
        _add_discover,
    ):
        add(sub)
    return parser


def _add_discover(sub: argparse._SubParsersAction) -> None:
    from .cli_discover import add_discover

    add_discover(sub)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print the metadata of .rknn files: inputs, outputs, versions, custom ops "
        "(no runtime needed)",
    )
    p.add_argument("files", nargs="+", metavar="FILE.rknn")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .rknnfile import describe, read_rknn
    from .rknnops import custom_ops, describe_custom

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


def _add_doctor(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .doctor import failed, render_table, run_doctor
    from .probes import DEFAULT_LIBRKNNRT_PATHS

    paths = args.librknnrt or DEFAULT_LIBRKNNRT_PATHS
    report = run_doctor(Path(args.root), Path(args.models), paths, args.strict)
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_table(report))
    return 1 if failed(report) else 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a model folder's ONNX or TorchScript model to .rknn with its recipe and "
        "accuracy gate (PC only)",
        description="Build model.rknn with rknn-toolkit2 (its own environment: deploy/convert-env.sh), "
        "compare it in the simulator with the float model (ONNX or TorchScript) on validation "
        "images, and write it "
        "only if the gate in model.yaml (convert.gate) passes. Exit 0 accepted, 1 error, 3 refused.",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="the model folder (holds model.yaml)")
    p.add_argument(
        "--source",
        "--onnx",
        metavar="FILE",
        help="the float model, .onnx or TorchScript .pt (default: convert.source, else onnx.file)",
    )
    p.add_argument("--output", metavar="FILE", help="where to write the .rknn (default: rknn.file)")
    p.add_argument("--validation", metavar="DIR", help="validation images (default: samples/)")
    p.add_argument("--target", choices=("rk3566", "rk3568", "rk3588", "rk3576", "rk3562"))
    p.add_argument("--report", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--analysis", action="store_true", help="add the toolkit's per-layer analysis")
    p.add_argument(
        "--threshold",
        action="append",
        metavar="NAME=VALUE",
        help="override a gate threshold, e.g. min_cosine=0.99 or min_top5_agreement=off (repeatable)",
    )
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert.cli import run

    return run(args)


def _add_bench(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--csv", metavar="FILE", help="also write one row per step as CSV")
    p.add_argument(
        "--json", metavar="FILE", help="also write the plan, the machine and the steps as JSON"
    )
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run

    return run(args)


def _add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="create a CURVE key pair for the daemon or a client (docs/SECURITY.md)",
        description="Write NAME.key (the public key: give it out) and NAME.key_secret (mode 0600: "
        "keep it where it is) into DIR. Existing files are never overwritten.",
    )
    p.add_argument("directory", metavar="DIR", help="where to write the two files")
    p.add_argument("--name", default="server", help="file name stem (default: server)")
    p.set_defaults(func=_cmd_keys)


def _cmd_keys(args: argparse.Namespace) -> int:
    from .security import create_keys

    public, secret = create_keys(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600)")
    print(
        "daemon: set curve_secret_key to the secret file and give clients the public one; "
        "client: put the public file in the daemon's curve_clients_dir and SIGHUP it"
    )
    return 0


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
