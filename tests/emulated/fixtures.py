"""Write a board's fixture files under an emulated board's root (run by build.sh).

    python tests/emulated/fixtures.py ROOT --soc rk3568 --librknnrt LIB --rknn-server 2.3.0 \\
        --driver 0.8.2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from tests.boards import make_board


def write_fixtures(root: Path, soc: str, librknnrt: Path, rknn_server: str, driver: str) -> None:
    """The files of a real board under ``root`` (tests/boards.py strings), the stand-in
    runtime at /usr/lib/librknnrt.so. Files are replaced, never written through: the
    userland under ``root`` is hard-linked."""
    cores = "NPU load:  Core0:  0%, Core1:  0%, Core2:  0%,\n"
    load = cores if soc == "rk3588" else "NPU load:  0%\n"
    with tempfile.TemporaryDirectory() as staging:
        fixtures = make_board(
            Path(staging),
            soc,
            driver,
            librknnrt=None,
            rknn_server=rknn_server,
            load=load,
            freq=600_000_000,
        )
        for source in sorted(p for p in fixtures.rglob("*") if p.is_file()):
            _replace(source, root / source.relative_to(fixtures))
    _replace(librknnrt, root / "usr/lib/librknnrt.so")


def _replace(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    shutil.copy2(source, target)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--soc", required=True)
    parser.add_argument("--librknnrt", type=Path, required=True)
    parser.add_argument("--rknn-server", required=True)
    parser.add_argument("--driver", required=True)
    args = parser.parse_args(argv)
    write_fixtures(args.root, args.soc, args.librknnrt, args.rknn_server, args.driver)


if __name__ == "__main__":
    main()
