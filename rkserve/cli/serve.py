"""``rkserve serve``: run the daemon."""

from __future__ import annotations

import argparse

from ..config import FIELDS, load_settings
from ..server import Server
from .common import setup_logging


def add(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Serve the models of a repository over ZeroMQ. Settings come from --config, "
        "then RKSERVE_* environment variables, then these flags.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML settings file (see docs/CONFIG.md)")
    for name, f in FIELDS.items():
        kind = type(f.default)
        flags = ["--" + name.replace("_", "-")] + ["--frigate"] * (name == "frigate_endpoint")
        if kind is bool:
            p.add_argument(
                *flags,
                dest=name,
                action="store_const",
                const=True,
                default=None,
                help=f.metadata["doc"],
            )
        else:
            p.add_argument(
                *flags,
                dest=name,
                type=kind,
                default=None,
                metavar=name.upper(),
                help=f"{f.metadata['doc']} (default {f.default!r})",
            )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    overrides = {name: getattr(args, name) for name in FIELDS}
    settings = load_settings(args.config, overrides=overrides)
    setup_logging(settings.log_level)
    return Server(settings).run()
