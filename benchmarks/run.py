"""Run every benchmark once and write ``docs/BENCHMARKS.md``.

    python -m benchmarks.run                 # all sections (a few minutes), writes the report
    python -m benchmarks.run --only memory   # one section, printed, report untouched
    python -m benchmarks.run --json out.json # also the raw figures

Every figure in the report is measured in this one run, on this machine, and stated next
to what it is compared with, so that reports from different machines stay comparable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from benchmarks import (
    baseline,
    cpucost,
    detection,
    frigate,
    instances,
    memory,
    overhead,
    pipelining,
    postprocess,
    reduced,
    stages,
    startup,
)
from benchmarks.common import ROOT, Section, Target, table
from rkserve.loadtest.report import machine_info

SECTIONS: Dict[str, Callable[[Path], Section]] = {
    "overhead": overhead.run,
    "pipelining": pipelining.run,
    "postprocess": postprocess.run,
    "memory": memory.run,
    "startup": startup.run,
    "baseline": baseline.run,
    "instances": instances.run,
    "detection": detection.run,
    "frigate": frigate.run,
    "cpucost": cpucost.run,
    "stages": stages.run,
    "reduced": reduced.run,
}
REPORT = ROOT / "docs" / "BENCHMARKS.md"

INTRO = """# Benchmarks

What the daemon costs and what it sustains, measured by `python -m benchmarks.run` (`make bench`),
which wrote this page. Each script in `benchmarks/` also runs alone and prints its section.
Every figure below was measured in the same run on the machine named here (each section
says when it ran and under which load: copy that line along if a section is ever re-run
alone and pasted in), and is stated as a ratio to something measured alongside it; absolute
numbers from this PC say little about a board, the ratios say what the daemon adds or saves.

On a board, measure the real thing with the daemon serving and `rkserve bench`:

```sh
rkserve bench -m mobilenet_v2 --images 'samples/*.jpg' -c 1,2,4,8 --csv bench.csv
rkserve bench -m ppseg --images frame.jpg --param mask=none -c 1,2,4 --duration 20
rkserve bench -m mobilenet_v2 --tensor 224x224 --rate 50,100,150 -c 16   # open loop
```

Its table has per step the throughput, client latency percentiles, errors by code, the
daemon's mean time per stage (`queue` is waiting and hand-offs) and the cores the bench
process itself used (`cpu`; one bench process of threads is enough while that stays well
under 1, see section 1).
"""

PROFILES = """## What the profiles showed

Found with py-spy (`record --threads` and `--gil`, sampling the daemon under `rkserve bench`
load), per-hop timestamps, /proc page-fault counts and timeit/cProfile in-process while
optimising, on this machine; the tables above re-measure the results.

- **Page faults, not Python, made the daemon's stages slower than the engine's.** The
  daemon pinned glibc's mmap threshold at 128 kB (to stop heaps keeping 1 MB messages), so
  every larger buffer was mapped and unmapped per request: ~700 minor faults for a 640x480
  JPEG, ~4,000 for 1920x1080, 235-700 per ONNX inference, 1 per 4 kB of a large message;
  the same decode took 2.7 ms in the daemon and 1.7 ms in-process. `rkserve/memory.py` now
  pins the threshold at 8 MB and the trim threshold at 16 MB and keeps 8 MB at the top of
  each heap: no faults for buffers up to 8 MB, 1080p classification at 4 concurrent
  requests 59 → 139 req/s (no NPU time, 2 cores), 1 MB tensors 316 → 856 req/s. The
  price is memory held for reuse: RSS rises once (section 4: with 1080p JPEGs, by the
  amount shown there) and stays flat; each heap holds at most 16 MB it does not use.
- **onnxruntime's idle threads spun** on the core a pool thread was decoding on: half of
  the decodes took 5.7 ms instead of 1.7 ms (2 cores), for no faster inference. The ONNX
  backend now lets them sleep (`session.intra_op.allow_spinning = 0`). On a board the NPU
  runtime has no such pool; the PC path (`make serve`, the demo models) gained.
- **The daemon's Python is not the bottleneck under load.** With the MobileNetV2-like model
  at concurrency 4 (1080p and 640x480 JPEGs), a thread held the GIL in ~4% of samples; the
  busiest on-CPU frame was `cv2.imdecode` inside `decode_image` (C, GIL released). JPEG
  decoding is the CPU cost that decides the bound once images are large (section 2).
- **Latency at concurrency 1 is thread hand-offs, not work.** Per hop with a tiny tensor:
  frontend parse and admission ~50 µs, waking a pool thread ~30 µs, the NPU runner ~15 µs,
  the post-processing hop ~20 µs, answering (metrics, msgpack, the inproc PUSH to the
  frontend) ~45 µs, the frontend forwarding it ~15 µs. Each hop is what lets the CPU stages
  of one request overlap the NPU time of another; section 1 shows their sum (`queue`) next
  to a bare round trip. `Metrics.observe` looks up six labelled children per request
  (~15 µs), the largest single item; caching them would save a little.
- **Segmentation post-processing** (fixed): `np.putmask` was ~85% of the per-class argmax
  loop; `np.bincount` widened every pixel to intp; zlib compressed unfiltered mask rows;
  the overlay used numpy fancy indexing and a boolean-mask assignment over 2 Mpx. Section 3
  times each replacement against the old way.
- **Reduced decode is a model.yaml opt-in** (`input.decode: reduced`, docs/MODELS.md):
  libjpeg decodes at 1/2, 1/4 or 1/8 scale when that still covers the input (section 10:
  1.8x less daemon CPU for 1080p into 224x224). It changes the pixels the model sees (DCT
  averaging instead of a bilinear resize of the full frame; one top-1 flip in 14 photos), so
  it is not the default: turn it on per model after checking the answers.
- **Per request, beyond the work** (issue #21, section 9): the colour swap ran on the whole
  decoded frame (now on the model input, after the resize), OpenCV's own thread pool ran
  beside the CPU workers (now one thread per call: `opencv_threads`), metrics looked up
  seven labelled children per answer (now cached), the fake backend opened its fault file
  per call (now a stat). What is left is ~0.6 ms of Python and transport per request
  (frontend parse and admission, hand-offs, the reply), the same for every image size.
"""


def run_sections(names: List[str], work: Path) -> List[Section]:
    sections = []
    for name in names:
        started, load = time.perf_counter(), os.getloadavg()[0]
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        print(f"== {name}", flush=True)
        try:
            section = SECTIONS[name](work / name)
        except Exception:  # a failed section is reported, the others still run
            section = Section(name, ["```", traceback.format_exc().rstrip(), "```", ""])
            section.targets.append(Target(f"{name}: ran", "failed", "runs", False))
        section.figures["seconds"] = time.perf_counter() - started
        section.figures["run"] = (
            f"*Run: {when}, commit {_commit()}, {section.figures['seconds']:.0f} s, load average "
            f"{load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.*"
        )
        print(f"   {section.figures['seconds']:.0f} s", flush=True)
        sections.append(section)
    return sections


def _commit() -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", "rkserve") else ""
    return commit + dirty


def render(sections: List[Section], machine: Dict[str, str], loads: List[float]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [INTRO, "## Machine", ""]
    lines += table(["", "this run"], [[k, v] for k, v in machine.items()])
    seconds = sum(s.figures.get("seconds", 0.0) for s in sections)
    lines += [
        "",
        f"Measured {when} at commit {_commit()}, in {seconds / 60:.1f} minutes"
        f"{', in a virtual machine' if _virtual() else ''}. "
        f"**This machine is shared**: other people's jobs were running (load average "
        f"{loads[0]:.1f} at the start and {loads[1]:.1f} at the end, on {machine['cores']} "
        "cores), so absolute times wobble between runs; the ratios were measured side by "
        "side and are the figures to read.",
        "",
        "## Targets",
        "",
    ]
    lines += table(
        ["target", "measured", "goal", "met"],
        [[t.name, t.measured, t.goal, _met(t)] for s in sections for t in s.targets],
    )
    lines.append("")
    for section in sections:
        lines += [f"## {section.title}", "", section.figures.get("run", ""), "", *section.body]
    lines.append(PROFILES)
    return "\n".join(lines).rstrip() + "\n"


def _virtual() -> bool:
    try:
        return " hypervisor" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _met(target: Target) -> str:
    if target.met is None:
        return target.note or "n/a"
    return "yes" if target.met else "**no**" + (f": {target.note}" if target.note else "")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=str(ROOT), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    parser.add_argument("--output", default=str(REPORT), help=f"the report (default {REPORT})")
    args = parser.parse_args(argv)
    names = args.only or list(SECTIONS)
    machine = machine_info()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="rkserve-bench-") as tmp:
        sections = run_sections(names, Path(tmp))
    loads.append(os.getloadavg()[0])
    if args.json:
        figures: Dict[str, Any] = {"machine": machine, "load": loads}
        figures.update({s.title: s.figures for s in sections})
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    if args.only:
        for section in sections:
            print("\n".join([f"## {section.title}", "", *section.body]))
            for target in section.targets:
                print(f"- {target.name}: {target.measured} ({_met(target)})")
        return 0
    Path(args.output).write_text(render(sections, machine, loads))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
