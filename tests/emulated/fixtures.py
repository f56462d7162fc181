"""Write a board's fixture files under an emulated board's root (run by build.sh).

    python tests/emulated/fixtures.py ROOT --soc rk3568 --librknnrt LIB --rknn-server 2.3.0 \\
        --driver 0.8.2 [--device dev/dri/renderD128] [--npu-driver rocket] [--compatible B]

``--driver none`` leaves the driver's version file out (the rocket driver has none).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from rkserve.board.probes import npu_family
from tests.boards import make_board


def write_fixtures(
    root: Path, soc: str, librknnrt: Path, rknn_server: str, driver: str, **board: Any
) -> None:
    """The files of a real board under ``root`` (tests/boards.py strings; ``board``: more
    of make_board's arguments), the stand-in runtime at /usr/lib/librknnrt.so. Files are
    replaced, never written through: the userland under ``root`` is hard-linked."""
    cores = "NPU load:  Core0:  0%, Core1:  0%, Core2:  0%,\n"
    load = cores if npu_family(soc) == "rk3588" else "NPU load:  0%\n"
    rocket = board.get("npu_driver") == "rocket"
    with tempfile.TemporaryDirectory() as staging:
        fixtures = make_board(
            Path(staging),
            soc,
            None if driver == "none" else driver,
            librknnrt=None,
            rknn_server=rknn_server,
            load=None if rocket else load,
            freq=None if rocket else 600_000_000,
            **board,
        )
        for source in sorted(fixtures.rglob("*")):
            if source.is_symlink() or source.is_file():
                _replace(source, root / source.relative_to(fixtures))
            elif source.is_dir():  # qemu's -L ignores a link whose target is missing
                (root / source.relative_to(fixtures)).mkdir(parents=True, exist_ok=True)
    _replace(librknnrt, root / "usr/lib/librknnrt.so")


def _replace(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    shutil.copy2(source, target, follow_symlinks=False)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--soc", required=True)
    parser.add_argument("--librknnrt", type=Path, required=True)
    parser.add_argument("--rknn-server", required=True)
    parser.add_argument("--driver", required=True)
    parser.add_argument("--device", default="dev/dri/renderD129")
    parser.add_argument("--npu-driver", default="RKNPU")
    parser.add_argument("--compatible")
    args = parser.parse_args(argv)
    board = {"device": args.device, "npu_driver": args.npu_driver, "compatible": args.compatible}
    write_fixtures(args.root, args.soc, args.librknnrt, args.rknn_server, args.driver, **board)


if __name__ == "__main__":
    main()
