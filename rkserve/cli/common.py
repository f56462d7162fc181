"""What the commands that talk to a daemon share: the endpoint options, the client, logging and tables."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List

from ..client import Client
from ..errors import ConfigError
from ..security import curve_keys

# No numpy/zmq at import time: `rkserve --version`, `doctor` and `convert` must start without them.
CLIENT_ENDPOINT = os.environ.get("RKSERVE_CLIENT_ENDPOINT", "tcp://127.0.0.1:5555")

CONNECT_TIMEOUT_S = 3.0


def setup_logging(level: str) -> None:
    # journald stamps each line itself; elsewhere add the time
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(message)s"
    )
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


def client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        "-e",
        action="append",
        metavar="ADDR",
        help=f"daemon address; repeat for several boards (models and health ask each one, infer "
        f"spreads its images over them), or dnssd: for every board announced on the LAN "
        f"(default {CLIENT_ENDPOINT}, env RKSERVE_CLIENT_ENDPOINT)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--curve-client-key",
        metavar="FILE",
        help="CURVE: this client's secret key file (from 'rkserve keys'); with --curve-server-key",
    )
    p.add_argument(
        "--curve-server-key", metavar="FILE", help="CURVE: the daemon's public key file (.key)"
    )


def client_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The Client keyword arguments the endpoint options give (all but the endpoints)."""
    curve = None
    if args.curve_client_key or args.curve_server_key:
        if not (args.curve_client_key and args.curve_server_key):
            raise ConfigError("--curve-client-key and --curve-server-key go together")
        curve = curve_keys(args.curve_client_key, args.curve_server_key)
    # no connection within a few seconds means no daemon there: say so, do not wait it out
    return {
        "timeout": args.timeout,
        "curve": curve,
        "connect_timeout": min(args.timeout, CONNECT_TIMEOUT_S),
    }


def endpoints(args: argparse.Namespace) -> List[str]:
    return list(args.endpoint or [CLIENT_ENDPOINT])


def open_client(args: argparse.Namespace) -> Any:
    return Client(endpoints(args), **client_settings(args))


def table(rows: List[Any]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
