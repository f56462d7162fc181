"""``rkserve discover``: the boards announced on the LAN, once or as a Prometheus file_sd file.

rkserve discover                       # a table after listening for --wait seconds
rkserve discover --json                # the same as JSON
rkserve discover --prometheus-sd /etc/prometheus/rkserve.json   # kept current until stopped
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..client import Client
from ..discovery import Board, Browser
from ..errors import ConfigError, RkserveError
from ..filesd import FileSd
from .common import table

PROBE_TIMEOUT_S = 1.0


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover",
        help="list the boards announced on the LAN (DNS-SD), or keep a Prometheus file_sd "
        "file of them current",
    )
    p.add_argument(
        "--wait", type=float, default=3.0, help="seconds to listen for boards (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="do not ask each board for its health (the STATE column)",
    )
    p.add_argument(
        "--interface",
        action="append",
        metavar="ADDR",
        help="browse on the interface with this IPv4 address only (repeatable; default: all)",
    )
    p.add_argument(
        "--prometheus-sd",
        metavar="FILE",
        help="write the boards' metrics targets to FILE (Prometheus file_sd JSON, replaced "
        "atomically) and keep it current until stopped (SIGTERM/SIGINT)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="with --prometheus-sd: stop after this many seconds (default 0: run until stopped)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.wait < 0 or args.duration < 0:
        raise ConfigError("--wait and --duration must be 0 or more")
    with Browser(args.interface) as browser:
        if args.prometheus_sd:
            return _keep_file_sd(browser, Path(args.prometheus_sd), args.duration)
        time.sleep(args.wait)  # mDNS has no "that was everyone": listen for a while
        found = browser.settle()  # and finish asking the boards heard of by then
        boards = sorted(found.values(), key=lambda b: b.name)
    rows = [_row(board, None if args.no_probe else _probe(board)) for board in boards]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0 if boards else 1


def _probe(board: Board) -> str:
    """The board's health status, asked directly (its TXT says what it serves, not how)."""
    if board.curve:
        return "curve (not probed)"
    client = Client(
        board.endpoint, timeout=PROBE_TIMEOUT_S, retries=0, connect_timeout=PROBE_TIMEOUT_S
    )
    try:
        return str(client.health()["status"])
    except RkserveError:
        return "unreachable"
    finally:
        client.close()


def _row(board: Board, state: Optional[str]) -> Dict[str, Any]:
    return {**board.to_dict(), "state": state or "-"}


def _table(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "no rkserve boards found"
    lines = [("NAME", "ADDRESS", "PORT", "SOC", "VERSION", "MODELS", "STATE")]
    for r in rows:
        models = ",".join(r["models"]) or (
            f"{r['model_count']} models" if r["model_count"] else "-"
        )
        lines.append(
            (r["name"], r["address"], str(r["port"]), r["soc"], r["version"], models, r["state"])
        )
    return table(lines)


def _keep_file_sd(browser: Browser, path: Path, duration: float) -> int:
    if not path.parent.is_dir():
        raise ConfigError(f"--prometheus-sd {path}: folder {path.parent} does not exist")
    stop = _stop_flag()
    until = time.monotonic() + duration if duration else float("inf")
    out = FileSd(path)
    seen = -1
    while not stop and time.monotonic() < until:
        if seen != browser.generation or out.writes == 0:
            seen = browser.generation
            boards = browser.boards().values()
            if out.update(boards):
                print(f"wrote {path}: {len(list(boards))} board(s)", file=sys.stderr, flush=True)
        browser.wait_change(seen, min(0.5, max(0.0, until - time.monotonic())))
    return 0


def _stop_flag() -> List[int]:
    """A list that becomes non-empty on SIGTERM or SIGINT."""
    flag: List[int] = []

    def stop(signum: int, frame: Any) -> None:
        flag.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return flag
