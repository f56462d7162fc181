"""``rkserve keys``: a CURVE key pair for the daemon or a client."""

from __future__ import annotations

import argparse

from ..security import create_keys


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="create a CURVE key pair for the daemon or a client (docs/SECURITY.md)",
        description="Write NAME.key (the public key: give it out) and NAME.key_secret (mode 0600: "
        "keep it where it is) into DIR. Existing files are never overwritten.",
    )
    p.add_argument("directory", metavar="DIR", help="where to write the two files")
    p.add_argument("--name", default="server", help="file name stem (default: server)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    public, secret = create_keys(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600)")
    print(
        "daemon: set curve_secret_key to the secret file and give clients the public one; "
        "client: put the public file in the daemon's curve_clients_dir and SIGHUP it"
    )
    return 0
