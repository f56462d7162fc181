"""``rkserve convert`` from the command line, in whichever environment has the toolkit.

rknn-toolkit2 lives in its own virtual environment (``deploy/convert-env.sh`` makes
``.venv-convert``): its pins conflict with the daemon's. When ``rknn.api`` cannot be
imported here, the command runs itself again as ``<converter python> -m rkserve convert ...``.
Exit codes: 0 accepted, 1 error, 3 refused by the accuracy gate (no model written).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from ..convert.flow import Progress, convert_model
from ..convert.recipe import load_recipe, parse_thresholds
from ..errors import ConfigError
from ..tasks import load_spec

VENV_NAME = ".venv-convert"
REFUSED = 3
_REEXEC_FLAG = "RKSERVE_CONVERT_REEXEC"


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a model folder's ONNX or TorchScript model to .rknn with its recipe and "
        "accuracy gate (PC only)",
        description="Build model.rknn with rknn-toolkit2 (its own environment: deploy/convert-env.sh), "
        "compare it in the simulator with the float model (ONNX or TorchScript) on validation "
        "images, and write it "
        "only if the gate in model.yaml (convert.gate) passes. Exit 0 accepted, 1 error, 3 refused.",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="the model folder (holds model.yaml)")
    p.add_argument(
        "--source",
        "--onnx",
        metavar="FILE",
        help="the float model, .onnx or TorchScript .pt (default: convert.source, else onnx.file)",
    )
    p.add_argument("--output", metavar="FILE", help="where to write the .rknn (default: rknn.file)")
    p.add_argument("--validation", metavar="DIR", help="validation images (default: samples/)")
    p.add_argument("--target", choices=("rk3566", "rk3568", "rk3588", "rk3576", "rk3562"))
    p.add_argument("--report", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--analysis", action="store_true", help="add the toolkit's per-layer analysis")
    p.add_argument(
        "--threshold",
        action="append",
        metavar="NAME=VALUE",
        help="override a gate threshold, e.g. min_cosine=0.99 or min_top5_agreement=off (repeatable)",
    )
    p.set_defaults(func=run)


def toolkit_available() -> bool:
    """Whether ``rknn.api`` (rknn-toolkit2) can be imported here, without importing it."""
    try:
        return importlib.util.find_spec("rknn.api") is not None
    except (ImportError, ValueError):
        return False


def converter_python() -> Optional[Path]:
    """The converter environment's interpreter: ``$RKSERVE_CONVERT_PYTHON`` or ``.venv-convert``."""
    override = os.environ.get("RKSERVE_CONVERT_PYTHON")
    if override:
        return Path(override)
    package_root = Path(__file__).resolve().parents[2]
    for base in (package_root, Path.cwd()):
        candidate = base / VENV_NAME / "bin" / "python"
        if candidate.exists():
            return candidate
    return None


def command_line(args: argparse.Namespace) -> List[str]:
    """The sub-command's arguments rebuilt from the parsed namespace (for the re-exec)."""
    argv = ["convert", args.model]
    for flag in ("source", "output", "validation", "target", "report"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag}", str(value)]
    for item in args.threshold or []:
        argv += ["--threshold", item]
    return argv + (["--analysis"] if args.analysis else [])


def reexec(args: argparse.Namespace) -> int:
    """Run the same command with the converter's Python; its exit code is ours."""
    python = converter_python()
    if os.environ.get(_REEXEC_FLAG) or python is None or not python.exists():
        where = f" ({python} does not exist)" if python is not None else ""
        raise ConfigError(
            f"rknn-toolkit2 is not installed for {sys.executable}{where}: run deploy/convert-env.sh "
            f"to create {VENV_NAME} (or set RKSERVE_CONVERT_PYTHON to a Python that has it)"
        )
    env = dict(os.environ, **{_REEXEC_FLAG: "1"})
    package_root = str(Path(__file__).resolve().parents[2])  # this checkout, not another one
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    sys.stderr.write(f"==> rknn-toolkit2 is not importable here: running under {python}\n")
    sys.stderr.flush()
    return subprocess.call([str(python), "-m", "rkserve", *command_line(args)], env=env)


def run(args: argparse.Namespace) -> int:
    """Validate the recipe, convert, and print the verdict; re-execute if the toolkit is elsewhere."""
    if not toolkit_available():
        return reexec(args)

    # every path is made absolute here, before anything changes directory (the toolkit
    # session runs in a temporary folder); a relative --source may name a file in the
    # model folder (recipe.resolve_source)
    spec = load_spec(Path(args.model).resolve(), need_model=False)
    thresholds = parse_thresholds(args.threshold or [])
    validation = _absolute(args.validation)
    source = Path(args.source) if args.source else None
    recipe = load_recipe(spec, args.target, validation, thresholds, source)
    output = _absolute(args.output) or spec.rknn_path
    report = _absolute(args.report)
    progress = Progress()
    outcome = convert_model(spec, recipe, output, report, args.analysis, progress)
    figures = ", ".join(f"{k} {v:.4f}" for k, v in outcome.report["metrics"].items())
    if not outcome.accepted:
        progress.say(f"REFUSED by the accuracy gate: {'; '.join(outcome.failures)}")
        print(
            f"rkserve convert: refused: {'; '.join(outcome.failures)}. No model written "
            f"({output} untouched); report: {outcome.markdown}",
            file=sys.stderr,
        )
        return REFUSED
    progress.say(f"accepted: {output} ({figures}); report: {outcome.markdown}")
    return 0


def _absolute(given: Optional[str]) -> Optional[Path]:
    """A path from the command line, relative to the current directory, made absolute."""
    return Path(given).resolve() if given else None
