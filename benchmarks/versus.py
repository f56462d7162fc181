"""Before and after: the daemon's CPU per request at another commit and in this tree, side by
side in one run.

    python -m benchmarks.versus 76f7b23                    # that commit against this tree
    python -m benchmarks.versus HEAD~3 -c 4 --rounds 9 --images 640x480,1920x1080

On a shared machine one round of section 9 swings by 20-40% from the next, and two runs at
two commits compare worse still. Here both daemons run at once (the other commit checked
out with ``git worktree`` in a temporary folder), serving the demo classifier on the fake
backend as in section 9, and the rounds alternate between them and the bare work, so load
from other jobs falls on all three alike. The figure to quote is the median of the
per-round ratios (after / before). Not part of ``benchmarks.run``: it compares code, it
does not describe this tree.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import cv2

from benchmarks.common import ROOT, demo_repository, ratio, rkserve_daemon, table
from benchmarks.cpucost import bare_cpu_ms, images, load, process_cpu
from tools.harness import Daemon

REQUESTS = {"1920x1080": 150, "640x480": 500, "160x161": 2000}  # per round: ~1 s of CPU


def checkout(revision: str, folder: Path) -> Path:
    """``revision`` checked out (detached) in ``folder``; remove it with :func:`remove`."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(folder), revision],
        check=True,
    )
    return folder


def remove(folder: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False
    )


def rounds(
    daemons: Dict[str, Daemon], data: bytes, count: int, concurrency: int, times: int
) -> Dict[str, List[float]]:
    """CPU ms per request of each daemon and of the bare work, ``times`` rounds each, the
    daemons' order reversed every other round."""
    found: Dict[str, List[float]] = {"bare": [], **{name: [] for name in daemons}}
    for daemon in daemons.values():
        load(daemon.endpoint, data, concurrency, 200)  # warm
    for index in range(times):
        found["bare"].append(bare_cpu_ms(data, count // 2))
        order = list(daemons.items())
        for name, daemon in order if index % 2 else reversed(order):
            before = process_cpu(daemon.pid)
            load(daemon.endpoint, data, concurrency, count)
            sent = max(1, count // concurrency) * concurrency
            found[name].append((process_cpu(daemon.pid) - before) * 1000.0 / sent)
    return found


def row(name: str, found: Dict[str, List[float]]) -> List[str]:
    bare = statistics.median(found["bare"])
    before, after = (statistics.median(found[k]) for k in ("before", "after"))
    change = statistics.median(a / b for a, b in zip(found["after"], found["before"]))
    return [
        name,
        f"{bare:.3f}",
        f"{before:.3f} ({ratio(before / bare)})",
        f"{after:.3f} ({ratio(after / bare)})",
        f"{change:.3f}",
    ]


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.versus", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("revision", help="the commit to compare this tree with (before)")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", default=",".join(REQUESTS), help="of: " + ", ".join(REQUESTS))
    args = parser.parse_args(list(argv) or None)
    unknown = set(args.images.split(",")) - set(REQUESTS)
    if unknown:
        parser.error(f"unknown images {sorted(unknown)}; choose of {', '.join(REQUESTS)}")
    cv2.setNumThreads(1)  # the bare work runs in one thread, as the daemons' OpenCV does
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models, pictures = demo_repository(work, ["shapes"]), images(work)
        sources = {"before": checkout(args.revision, work / "before"), "after": ROOT}
        flags = ("--backend", "fake", "--fake-latency-ms", "0")
        daemons: Dict[str, Daemon] = {}
        try:
            for name, source in sources.items():
                daemon = rkserve_daemon(models, *flags, source=source, name=name)
                daemons[name] = daemon.start(timeout=120.0)
            rows = [
                row(
                    picture,
                    rounds(
                        daemons,
                        pictures[picture],
                        REQUESTS[picture],
                        args.concurrency,
                        args.rounds,
                    ),
                )
                for picture in args.images.split(",")
            ]
        finally:
            for daemon in daemons.values():
                daemon.stop()
            remove(sources["before"])
    print(
        f"{args.revision} (before) against this tree (after), concurrency {args.concurrency}, "
        f"medians of {args.rounds} rounds:\n"
    )
    headers = ["image", "bare work CPU ms", "before: daemon CPU ms", "after", "after / before"]
    print("\n".join(table(headers, rows)))


if __name__ == "__main__":
    main()
