"""``rkserve doctor``: run every board and model check without the daemon, and show them.

One table, one line per check (the fix on the line below it), then a summary; or the same
as JSON. ``failed(report)`` decides the exit status::

    >>> report = run_doctor(Path("/"), Path("models"))
    >>> print(render_table(report))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..errors import ConfigError, RknnFileError
from ..spec import SPEC_FILE
from ..tasks import load_spec
from .checks import FAIL, OK, SKIP, WARN, Board, Check, board_checks, model_checks, probe_board
from .probes import DEFAULT_LIBRKNNRT_PATHS
from .rknnfile import read_rknn
from .rknnops import PLUGIN_DIR, custom_ops, describe_custom, plugin_for, plugins

__all__ = ["DoctorReport", "failed", "model_folders", "render_table", "run_doctor"]

Section = Tuple[str, List[Check]]  # ("board" or the model's name, its checks)


@dataclass(frozen=True)
class DoctorReport:
    root: str
    models: str
    strict: bool
    board: Board
    sections: List[Section]

    def to_dict(self) -> Dict[str, Any]:
        checks = [
            {"scope": scope, **check.to_dict()} for scope, items in self.sections for check in items
        ]
        return {
            "root": self.root,
            "models": self.models,
            "strict": self.strict,
            "ok": not failed(self),
            "summary": _counts(self),
            "board": self.board.to_dict(),
            "checks": checks,
        }


def run_doctor(
    root: Path,
    models: Path,
    librknnrt_paths: Sequence[str] = DEFAULT_LIBRKNNRT_PATHS,
    strict: bool = False,
) -> DoctorReport:
    """Probe the board under ``root`` and check it and every model folder under ``models``."""
    board = probe_board(root, librknnrt_paths)
    sections: List[Section] = [("board", board_checks(board, strict))]
    for folder in model_folders(models):
        sections.append((folder.name, check_model_folder(board, folder, strict, root)))
    return DoctorReport(str(root), str(models), strict, board, sections)


def model_folders(models: Path) -> List[Path]:
    """The sub-folders of ``models`` holding a model.yaml, sorted by name."""
    if not models.is_dir():
        return []
    return sorted(p for p in models.iterdir() if (p / SPEC_FILE).is_file())


def check_model_folder(
    board: Board, folder: Path, strict: bool = False, root: Path = Path("/")
) -> List[Check]:
    """Checks of one model folder's spec and ``.rknn`` against ``board`` (under ``root``)."""
    checks: List[Check] = []
    try:
        rknn = load_spec(folder).rknn_path
    except ConfigError as exc:
        checks.append(Check(SPEC_FILE, FAIL, str(exc), "fix model.yaml (see docs/MODELS.md)"))
        rknn = folder / "model.rknn"
    if not rknn.is_file():
        detail = f"no {rknn.name}: only the onnx backend can serve this model"
        return [*checks, Check("rknn", SKIP, detail)]
    try:
        info = read_rknn(rknn)
    except RknnFileError as exc:
        fix = (
            "re-export it with rknn-toolkit2 (the runtime rejects files that are not RKNN2 "
            "with `parseRKNN: invalid RKNN_MAGIC!`)"
        )
        return [*checks, Check("rknn", FAIL, str(exc), fix)]
    ops = custom_ops(rknn)
    custom = [_check_custom_ops(ops, root)] if ops else []
    return checks + model_checks(board, info, strict) + custom


def _check_custom_ops(ops: Tuple[str, ...], root: Path) -> Check:
    """A model with custom ops runs only where librknnrt finds a plugin library for each."""
    detail = describe_custom(ops, root)
    if all(plugin_for(op, plugins(root)) for op in ops):
        return Check("custom ops", OK, detail)
    return Check(
        "custom ops",
        WARN,
        detail,
        f"install the model's custom-op plugin(s) (librkcst_<op>.so, built with Rockchip's "
        f"custom op SDK) into /{PLUGIN_DIR}",
    )


def failed(report: DoctorReport) -> bool:
    return any(c.status == FAIL for _, items in report.sections for c in items)


def _counts(report: DoctorReport) -> Dict[str, int]:
    counts = {status: 0 for status in (OK, WARN, FAIL, SKIP)}
    for _, items in report.sections:
        for check in items:
            counts[check.status] += 1
    return counts


def render_table(report: DoctorReport) -> str:
    """The human-readable report: ``STATUS  CHECK  DETAIL`` rows, fixes indented below."""
    rows = [
        (check.status, f"{scope}: {check.name}", check.detail, check.fix)
        for scope, items in report.sections
        for check in items
    ]
    width = max([len("CHECK")] + [len(row[1]) for row in rows])
    lines = [f"rkserve doctor: board at {report.root}, models in {report.models}", ""]
    lines.append(f"{'STATUS':<6}  {'CHECK':<{width}}  DETAIL")
    for status, name, detail, fix in rows:
        lines.append(f"{status:<6}  {name:<{width}}  {detail}")
        if fix and status in (WARN, FAIL):
            lines.append(f"{'':<6}  {'':<{width}}  fix: {fix}")
    counts = _counts(report)
    lines.append("")
    lines.append(", ".join(f"{counts[s]} {s}" for s in (FAIL, WARN, OK, SKIP)))
    return "\n".join(lines)
