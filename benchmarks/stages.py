"""Where the daemon's CPU per request goes, stage by stage (issue #21; section 9's table).

The daemon runs as in section 9 (the demo classifier on the fake backend, no NPU time,
loopback TCP, one client at concurrency 1), but started through this module, which wraps
each stage's function in a timer of the calling thread's CPU (``time.thread_time_ns``)
before handing over to ``rkserve serve``; at exit it writes what each stage cost per call.
The costs are those of the daemon's own threads between requests, with the caches that the
other threads and the decode left: several times what the same calls cost in a loop.

    python -m benchmarks.stages              # the table, for the small sample and 640x480
"""

from __future__ import annotations

import atexit
import collections
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from benchmarks.common import Section, demo_repository, main, rkserve_daemon, table
from benchmarks.cpucost import images, load

OUT = "RKSERVE_STAGES_OUT"  # where the daemon writes its stage costs (JSON), at exit
REQUESTS = 3000
# (module, class or "", function, what it is), in the order the table shows them
STAGES = (
    ("rkserve.frontend", "Frontend", "serve_ready", "the frontend's turn: read, parse, admit"),
    (
        "rkserve.protocol",
        "",
        "decode_request",
        "of which parsing: structure check, msgpack, protocol",
    ),
    (
        "rkserve.pipeline",
        "Pipeline",
        "admit",
        "of which admission: header, memory charge, job, hand-off",
    ),
    ("rkserve.pipeline", "Pipeline", "step", "the runner's turn: prepare, NPU, finish, answer"),
    (
        "rkserve.engine",
        "Engine",
        "prepare",
        "of which prepare: decode, resize, colour swap",
    ),
    ("rkserve.engine", "Engine", "run", "of which the NPU call (the fake backend)"),
    ("rkserve.engine", "Engine", "finish", "of which finish: the task's post-processing"),
    ("rkserve.pipeline", "Pipeline", "_answer", "of which the answer: metrics, the send"),
    ("rkserve.frontend", "Frontend", "send", "of the answer, the send: lock, outbox, ZeroMQ"),
)


# the steps inside those stages, timed in a second daemon: their timers, inside a timed
# stage, would add to it (each wrapped call ~1 µs more, and they run several a request)
DETAIL = (
    ("rkserve.frontend", "Frontend", "_recv_frames", "frontend: reading the message's frames"),
    ("rkserve.protocol", "", "check_message", "parsing: the msgpack structure check"),
    ("rkserve.pipeline", "", "encoded", "admission: reading the image's header"),
    ("rkserve.engine", "Engine", "parse_params", "admission: the task's params"),
    ("rkserve.modelhost", "ModelHost", "enqueue", "admission: the hand-off to the runner"),
    ("rkserve.modelhost", "Door", "ok", "runner: the reply's msgpack"),
    ("rkserve.metrics", "Metrics", "observe", "answer: the metrics"),
    ("rkserve.outbox", "Outbox", "send", "answer: the outbox and ZeroMQ's send"),
    (
        "rkserve.frontend",
        "Frontend",
        "_requests_waiting",
        "a look at the socket's events (the frontend's, after a send)",
    ),
)
SETS = {"stages": STAGES, "detail": DETAIL}
WHICH = "RKSERVE_STAGES_SET"  # which set the daemon times


def timed(function: Callable[..., Any], spent: List[int]) -> Callable[..., Any]:
    """``function``, adding the calling thread's CPU ns and one call to ``spent``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time_ns()
        try:
            return function(*args, **kwargs)
        finally:
            spent[0] += time.thread_time_ns() - started
            spent[1] += 1

    return wrapper


def serve(argv: List[str]) -> int:
    """``rkserve`` with every stage timed; the costs go to ``$RKSERVE_STAGES_OUT`` at exit.
    ``decode_request`` is wrapped where the frontend looks it up (its module attribute)."""
    from rkserve.cli import main as rkserve_main

    spent: Dict[str, List[int]] = collections.defaultdict(lambda: [0, 0])
    for module_name, owner, name, label in SETS[os.environ.get(WHICH, "stages")]:
        holder: Any = importlib.import_module(module_name)
        holder = getattr(holder, owner) if owner else holder
        setattr(holder, name, timed(getattr(holder, name), spent[label]))

    def write() -> None:
        Path(os.environ[OUT]).write_text(json.dumps(spent))

    atexit.register(write)
    return rkserve_main(argv)


def measure(work: Path, name: str, data: bytes, which: str = "stages") -> Dict[str, List[int]]:
    """The costs of the set ``which`` in one daemon serving ``REQUESTS`` requests for
    ``data``."""
    out = work / f"{which}-{name}.json"
    daemon = rkserve_daemon(
        demo_repository(work, ["shapes"]), "--backend", "fake", "--fake-latency-ms", "0"
    )
    daemon.args[1:3] = ["-m", "benchmarks.stages"]  # python -m benchmarks.stages serve ...
    daemon.env[OUT] = str(out)
    daemon.env[WHICH] = which
    daemon.start(timeout=120.0)
    try:
        load(daemon.endpoint, data, 1, REQUESTS)
    finally:
        daemon.stop()
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def run(work: Path) -> Section:
    section = Section("9b. The daemon's CPU per request by stage")
    pictures = images(work)
    names = ("160x161", "640x480")
    for which, note in (
        ("stages", 'A row "of which" is part of the turn above it.'),
        ("detail", "Steps inside those stages, from a second daemon of each."),
    ):
        found = {name: measure(work, name, pictures[name], which) for name in names}
        rows = [
            [label, *(_per_call(found[name].get(label)) for name in names)]
            for _, _, _, label in SETS[which]
        ]
        section.body += [
            f"CPU time of the calling thread per call (µs), {REQUESTS} requests at "
            f"concurrency 1 per image; the demo classifier on the fake backend. {note}",
            "",
            *table(["stage" if which == "stages" else "step", *(f"{n}, µs" for n in names)], rows),
            "",
        ]
        section.figures[which] = found
    return section


def _per_call(entry: Any) -> str:
    return f"{entry[0] / entry[1] / 1000.0:.0f}" if entry and entry[1] else "-"


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.exit(serve(sys.argv[1:]))
    main(run)
