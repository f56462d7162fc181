"""The model repository: ``<models_dir>/<name>/model.yaml``; the folder name is the model name.

A scan never raises for one bad model: each folder becomes an :class:`Entry` holding its
spec or the reason it cannot be used, so the daemon serves the good ones and reports the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from .backends import open_backend
from .engine import Engine
from .errors import ConfigError, UnknownModel
from .kernels.image import MAX_PIXELS
from .spec import SPEC_FILE, ModelSpec, model_files
from .tasks import load_spec

if TYPE_CHECKING:
    from .engine import Engine

Fingerprint = Tuple[Tuple[str, int, int], ...]


@dataclass(frozen=True)
class Entry:
    name: str
    folder: Path
    spec: Optional[ModelSpec]
    error: Optional[str]
    fingerprint: Fingerprint  # changes when any of the model's files changes


def fingerprint(folder: Path, spec: Optional[ModelSpec]) -> Fingerprint:
    paths = model_files(spec) if spec else [folder / SPEC_FILE]
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        stamps.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def scan(models_dir: Path) -> Dict[str, Entry]:
    """Every sub-folder holding a model.yaml, sorted by name; hidden folders (``.name``: a
    model being written, see :mod:`rkserve.frigate_upload`) are not models."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ConfigError(f"models directory {models_dir} does not exist or is not a directory")
    entries = {}
    folders = (p for p in models_dir.iterdir() if not p.name.startswith("."))
    for folder in sorted(p for p in folders if (p / SPEC_FILE).is_file()):
        entries[folder.name] = load_entry(folder)
    return entries


def load_entry(folder: Path) -> Entry:
    try:
        spec: Optional[ModelSpec] = load_spec(folder)
        error = None
    except ConfigError as exc:
        spec, error = None, str(exc)
    return Entry(folder.name, folder, spec, error, fingerprint(folder, spec))


def build_engine(spec: ModelSpec, kind: str, max_pixels: int, **options: object) -> Engine:
    """The one place an engine is built: backend ``kind`` (``auto`` chooses) + ``spec``.

    A backend whose engine cannot be built (a model.yaml that does not fit the model) is
    closed before the error propagates, so nothing of it stays loaded.
    """

    backend = open_backend(kind, spec, **options)
    try:
        return Engine(spec, backend, max_pixels=max_pixels)
    except BaseException:
        backend.close()
        raise


def open_engine(
    models_dir: Path,
    name: str,
    backend: str = "auto",
    max_pixels: int = MAX_PIXELS,
    **options: object,
) -> Engine:
    """Load one model of a repository in-process: the engine without the daemon."""

    entries = scan(models_dir)
    if name not in entries:
        known = ", ".join(entries) or "none"
        raise UnknownModel(f"no model named {name!r} in {models_dir} (models: {known})")
    entry = entries[name]
    if entry.spec is None:
        raise ConfigError(entry.error or f"model {name!r} is invalid")
    return build_engine(entry.spec, backend, max_pixels, **options)
