"""``rkserve models`` and ``rkserve health``: what a running daemon serves, and whether it is ready."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List

from ..client import DISCOVER, ask_each
from ..discovery import Browser
from ..errors import ConfigError, RkserveError, Unavailable
from .common import client_options, client_settings, endpoints, table

LISTEN_S = 3.0  # how long dnssd: listens for boards


def add(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        ("models", "list the daemon's models and their state"),
        ("health", "is the daemon live, and which models are ready"),
    ):
        q = sub.add_parser(name, help=text)
        client_options(q)
        q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``models`` or ``health`` of every endpoint given, each asked on its own; exit 1 when
    any daemon does not answer or any of its models is not ready."""
    answers = ask_each(_named(endpoints(args)), args.command, **client_settings(args))
    if len(answers) == 1 and isinstance(answers[0][1], RkserveError):
        raise answers[0][1]  # one daemon: its error is the command's, as before
    if args.json:
        shown = [_status_json(e, a, args.command) for e, a in answers]
        print(json.dumps(shown[0][args.command] if len(shown) == 1 else shown, indent=2))
    else:
        blocks = [_status_text(e, a, args.command, len(answers) > 1) for e, a in answers]
        print("\n\n".join(blocks))
    return 0 if all(_status_ready(a, args.command) for _, a in answers) else 1


def _named(given: List[str]) -> List[str]:
    """The endpoints to ask: ``dnssd:`` stands for every board announced on the LAN now
    (listened for ``LISTEN_S``, as ``rkserve discover`` does)."""
    if DISCOVER not in given:
        return given
    if given != [DISCOVER]:
        raise ConfigError(f"{DISCOVER} stands for every board found: give it alone")
    with Browser() as browser:
        time.sleep(LISTEN_S)  # mDNS has no "that was everyone"
        boards = sorted(browser.settle().values(), key=lambda b: b.name)
    if not boards:
        raise Unavailable(f"no rkserve board answered on the LAN within {LISTEN_S:.0f} s")
    return [board.endpoint for board in boards]


def _status_ready(answer: Any, command: str) -> bool:
    if isinstance(answer, Exception):
        return False
    if command == "health":
        return bool(answer.get("ready"))
    return all(m.get("ready") for m in answer)


def _status_json(endpoint: str, answer: Any, command: str) -> Dict[str, Any]:
    if isinstance(answer, Exception):
        error = {"code": getattr(answer, "code", "internal"), "message": str(answer)}
        return {"endpoint": endpoint, "error": error}
    return {"endpoint": endpoint, command: answer}


def _status_text(endpoint: str, answer: Any, command: str, titled: bool) -> str:
    if isinstance(answer, Exception):
        text = f"error: {getattr(answer, 'code', 'internal')}: {answer}"
    else:
        text = _models_table(answer) if command == "models" else _health_text(answer)
    return f"== {endpoint}\n{text}" if titled else text


def _models_table(models: List[Dict[str, Any]]) -> str:
    rows = [("MODEL", "TASK", "INPUT", "LABELS", "BACKEND", "STATE")]
    notes = []
    for m in models:
        shape = "x".join(str(d) for d in m.get("input_shape", [])) or "-"
        if m.get("inputs"):  # a tensor model: each input's shape
            shape = ", ".join("x".join(str(d) for d in i["shape"]) for i in m["inputs"])
        rows.append(
            (
                m["name"],
                m.get("task", "-"),
                shape,
                str(m.get("labels", "-")),
                m.get("backend", "-"),
                m["state"],
            )
        )
        if m.get("error"):
            notes.append(f"  {m['name']}: {m['error']}")
    return table(rows) + ("\n" + "\n".join(notes) if notes else "")


def _health_text(health: Dict[str, Any]) -> str:
    lines = [f"live: {health['live']}  ready: {health['ready']}  status: {health['status']}"]
    for name, m in health["models"].items():
        lines.append(f"  {name}: {m['state']}" + (f" ({m['error']})" if m.get("error") else ""))
    return "\n".join(lines)
