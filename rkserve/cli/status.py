"""``rkserve models`` and ``rkserve health``: what a running daemon serves, and whether it is ready."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

from .common import client_options, open_client, table


def add(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        ("models", "list the daemon's models and their state"),
        ("health", "is the daemon live, and which models are ready"),
    ):
        q = sub.add_parser(name, help=text)
        client_options(q)
        q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        data: Any = client.models() if args.command == "models" else client.health()
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.command == "models":
        print(_models_table(data))
    else:
        print(_health_text(data))
    return 0 if args.command == "models" or data.get("ready") else 1


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
