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

from ..errors import ConfigError

VENV_NAME = ".venv-convert"
REFUSED = 3
_REEXEC_FLAG = "RKSERVE_CONVERT_REEXEC"


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
    from ..spec import load_spec
    from .flow import Progress, convert_model
    from .recipe import load_recipe, parse_thresholds

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
