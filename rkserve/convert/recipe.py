"""``rkserve convert``: ONNX → RKNN on a PC, with a quantization recipe and an accuracy gate.

The recipe is the ``convert:`` section of ``model.yaml`` (documented in ``docs/CONVERT.md``)::

    convert:
      target_platform: rk3568
      dataset: calib            # calibration images (folder or .txt list)
      quantized_algorithm: normal
      gate: {min_top1_agreement: 0.9, min_cosine: 0.98}

This module validates the recipe; it imports neither rknn-toolkit2 nor onnxruntime, so the
daemon's environment can use it. The conversion itself is
:func:`rkserve.convert.flow.convert_model`, which runs inside ``.venv-convert``;
:mod:`rkserve.cli.convert` gets the command there.

Example::

    >>> spec = load_spec(Path("models/shapes"))
    >>> recipe = load_recipe(spec, target="rk3568")
    >>> recipe.target_platforms, recipe.gate["min_top1_agreement"]
    (('rk3568',), 0.9)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..spec import ModelSpec, SpecReader, is_number
from .source import source_kind

PLATFORMS = ("rk3566", "rk3568", "rk3588", "rk3576", "rk3562")
DTYPES = ("w8a8", "w8a16", "w16a16i", "w16a16i_dfp", "w4a16")
ALGORITHMS = ("normal", "kl_divergence", "mmse")
METHODS = ("layer", "channel")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MASK_SUFFIX = ".mask.png"  # ground truth beside a sample, never a model input
GATES: Dict[str, Dict[str, Optional[float]]] = {
    "classification": {"min_top1_agreement": 0.9, "min_top5_agreement": None, "min_cosine": 0.98},
    "segmentation": {"min_pixel_agreement": 0.95, "min_miou": 0.8, "min_cosine": None},
    "detection": {
        "min_box_recall": 0.9,
        "min_box_precision": 0.9,
        "min_mean_iou": 0.8,
        "min_score_agreement": 0.9,
        "min_cosine": None,
    },
}
_FIELDS = (
    "source",
    "target_platform",
    "mean",
    "std",
    "quantize",
    "quantized_dtype",
    "quantized_algorithm",
    "quantized_method",
    "dataset",
    "hybrid_fp16_layers",
    "validation",
    "gate",
)


@dataclass(frozen=True)
class Recipe:
    """A validated ``convert:`` section; mean/std in the model's colour order. Paths are
    absolute: the toolkit session runs in a temporary folder, where a relative path would
    name something else."""

    source: Path  # the float model: .onnx, or TorchScript .pt
    target_platforms: Tuple[str, ...]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    quantize: bool
    quantized_dtype: str
    quantized_algorithm: str
    quantized_method: str
    dataset: Optional[Path]
    hybrid_fp16_layers: Tuple[str, ...]
    validation: Path
    gate: Dict[str, float] = field(default_factory=dict)  # only the thresholds in force

    def __post_init__(self) -> None:
        for path in (self.source, self.dataset, self.validation):
            if path is not None and not Path(path).is_absolute():
                raise ValueError(f"Recipe paths must be absolute, got {path}")

    def to_dict(self, folder: Optional[Path] = None) -> Dict[str, Any]:
        """JSON-ready; paths inside ``folder`` (the model folder) are given relative to it."""
        return {
            "source": show_path(self.source, folder),
            "target_platform": list(self.target_platforms),
            "mean": list(self.mean),
            "std": list(self.std),
            "quantize": self.quantize,
            "quantized_dtype": self.quantized_dtype,
            "quantized_algorithm": self.quantized_algorithm,
            "quantized_method": self.quantized_method,
            "dataset": show_path(self.dataset, folder) if self.dataset else None,
            "hybrid_fp16_layers": list(self.hybrid_fp16_layers),
            "validation": show_path(self.validation, folder),
            "gate": dict(self.gate),
        }


def show_path(path: Path, folder: Optional[Path] = None) -> str:
    """``path`` relative to ``folder`` when inside it (reports stay valid when the folder moves)."""
    if folder is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(folder).resolve()))
        except ValueError:
            pass
    return str(path)


class _Section(SpecReader):
    """The ``convert:`` mapping, read like the rest of model.yaml (errors name the file and
    the dotted field), with the model it belongs to."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec.spec_path, dict(spec.convert), "convert.")
        self.spec = spec

    def triple(
        self, key: str, default: Tuple[float, float, float], positive: bool
    ) -> Tuple[float, float, float]:
        value = self.data.get(key, default)
        if is_number(value):
            value = [value] * 3
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(is_number(v) for v in value)
        )
        if not ok or (positive and min(value) <= 0):
            kind = "positive numbers" if positive else "numbers"
            raise self.fail(key, f"expected 3 {kind} in the model's colour order, got {value!r}")
        return (float(value[0]), float(value[1]), float(value[2]))

    def existing(self, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise self.fail(
                key, f"expected a folder or .txt file relative to the model folder, got {value!r}"
            )
        path = absolute(self.spec.folder / value)
        if not path.exists():
            raise self.fail(key, f"{path} does not exist")
        return path


def load_recipe(
    spec: ModelSpec,
    target: Optional[str] = None,
    validation: Optional[Path] = None,
    thresholds: Optional[Mapping[str, Optional[float]]] = None,
    source: Optional[Path] = None,
) -> Recipe:
    """Validate ``spec.convert``; ``target``, ``validation``, ``thresholds`` and ``source``
    override it."""
    if spec.task not in GATES:
        raise ConfigError(
            f"{spec.spec_path}: task: rkserve convert has an accuracy gate for "
            f"{', '.join(GATES)} models, not {spec.task}: convert this one with rknn-toolkit2 "
            "itself (docs/CONVERT.md)"
        )
    section = _Section(spec)
    unknown = sorted(set(section.data) - set(_FIELDS))
    if unknown:
        raise section.fail(unknown[0], f"unknown field (known: {', '.join(_FIELDS)})")
    _check_onnx_input(spec)
    quantize = section.data.get("quantize", True)
    if not isinstance(quantize, bool):
        raise section.fail("quantize", f"expected true or false, got {quantize!r}")
    dataset = _dataset(section, quantize)
    return Recipe(
        source=_source(section, source),
        target_platforms=_platforms(section, target),
        mean=section.triple("mean", spec.onnx.mean, positive=False),
        std=section.triple("std", spec.onnx.std, positive=True),
        quantize=quantize,
        quantized_dtype=section.choice("quantized_dtype", DTYPES, "w8a8"),
        quantized_algorithm=section.choice("quantized_algorithm", ALGORITHMS, "normal"),
        quantized_method=section.choice("quantized_method", METHODS, "channel"),
        dataset=dataset,
        hybrid_fp16_layers=_layers(section, quantize),
        validation=_validation(section, validation, dataset),
        gate=_gate(section, thresholds or {}),
    )


def _check_onnx_input(spec: ModelSpec) -> None:
    if spec.onnx.layout != "nchw" or spec.onnx.dtype != "float32":
        raise ConfigError(
            f"{spec.spec_path}: onnx: rknn-toolkit2 converts float32 NCHW ONNX inputs; this "
            f"model declares {spec.onnx.dtype} {spec.onnx.layout.upper()} (export a float NCHW model)"
        )


def absolute(path: Path) -> Path:
    """``path`` made absolute against the current directory, its symlinks kept: a model
    file linked into a folder keeps its own name (and so its kind)."""
    return Path(os.path.abspath(path))


def resolve_source(given: Path, folder: Path) -> Path:
    """``--source`` as an absolute path: as given when absolute; a relative one names a file
    in the current directory or in the model folder (``--source model.pt``). Both existing
    and being different files is an error, not a guess; neither existing gives the model
    folder's path (the error then names it)."""
    given = Path(given)
    if given.is_absolute():
        return absolute(given)
    here, there = absolute(given), absolute(Path(folder) / given)
    if here.is_file() and there.is_file() and not here.samefile(there):
        raise ConfigError(
            f"--source {given}: ambiguous: both {here} (from the current directory) and "
            f"{there} (in the model folder) exist; give ./{given} or the model folder's path"
        )
    return here if here.is_file() and not there.is_file() else there


def _source(section: _Section, override: Optional[Path]) -> Path:
    """``convert.source`` (default ``onnx.file``) in the model folder, or ``--source``."""
    if override is not None:
        path = resolve_source(override, section.spec.folder)
        where = f"--source {override}"
    else:
        value = section.data.get("source", section.spec.onnx.file)
        if not isinstance(value, str) or not value:
            raise section.fail("source", f"expected a file name in the model folder, got {value!r}")
        path = absolute(section.spec.folder / value)
        where = f"{section.spec.spec_path}: convert.source"
    try:
        source_kind(path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).split(': ', 1)[1]}") from None
    if not path.is_file():
        hint = "" if "source" in section.data else " (or name the model: convert.source: model.pt)"
        raise ConfigError(f"{where}: {path} does not exist{hint}")
    return path


def _platforms(section: _Section, override: Optional[str]) -> Tuple[str, ...]:
    value = section.data.get("target_platform", "rk3568") if override is None else override
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(n in PLATFORMS for n in names):
        raise section.fail(
            "target_platform", f"expected one of {', '.join(PLATFORMS)} (or a list), got {value!r}"
        )
    return tuple(str(n) for n in names)


def _dataset(section: _Section, quantize: bool) -> Optional[Path]:
    value = section.data.get("dataset")
    if value is None:
        default = section.spec.folder / "calib"
        if not quantize:
            return None
        if not default.is_dir():
            raise section.fail(
                "dataset", "required to quantize (a folder of calibration images, or a .txt list)"
            )
        return absolute(default)
    path = section.existing("dataset", value)
    if not list_images(path):
        raise section.fail("dataset", f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return path


def _layers(section: _Section, quantize: bool) -> Tuple[str, ...]:
    value = section.data.get("hybrid_fp16_layers", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise section.fail(
            "hybrid_fp16_layers", f"expected a list of layer output names, got {value!r}"
        )
    if value and not quantize:
        raise section.fail("hybrid_fp16_layers", "only meaningful with quantize: true")
    return tuple(value)


def _validation(section: _Section, override: Optional[Path], dataset: Optional[Path]) -> Path:
    if override is not None:
        path = absolute(Path(override))
        where = f"--validation {override}"
    elif "validation" in section.data:
        path = section.existing("validation", section.data["validation"])
        where = f"{section.spec.spec_path}: convert.validation"
    else:
        samples = section.spec.folder / "samples"
        path = absolute(samples) if samples.is_dir() else dataset  # type: ignore[assignment]
        where = f"{section.spec.spec_path}: convert.validation (default samples/ or the dataset)"
        if path is None:
            raise section.fail(
                "validation", "required: no samples/ folder and no dataset to validate on"
            )
    if not path.exists() or not list_images(path):
        raise ConfigError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return path


def _gate(section: _Section, overrides: Mapping[str, Optional[float]]) -> Dict[str, float]:
    known = GATES[section.spec.task]
    value = section.data.get("gate") or {}
    if not isinstance(value, dict):
        raise section.fail("gate", f"expected a mapping of thresholds, got {value!r}")
    names = ", ".join(known)
    for name in value:
        if name not in known:
            raise section.fail(f"gate.{name}", f"unknown for {section.spec.task} (known: {names})")
    for name in overrides:
        if name not in known:
            raise ConfigError(
                f"--threshold {name}: unknown for {section.spec.task} (known: {names})"
            )
    merged: Dict[str, Any] = {**known, **value, **overrides}
    for name, threshold in merged.items():
        if threshold is not None and not (is_number(threshold) and 0.0 <= threshold <= 1.0):
            raise section.fail(
                f"gate.{name}", f"expected a number in 0..1 (or null), got {threshold!r}"
            )
    return {k: float(v) for k, v in merged.items() if v is not None}


def parse_thresholds(items: Sequence[str]) -> Dict[str, Optional[float]]:
    """``["min_cosine=0.99", "min_top5_agreement=off"]`` → ``{"min_cosine": 0.99, ...: None}``."""
    out: Dict[str, Optional[float]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--threshold {item!r}: expected NAME=VALUE, e.g. min_cosine=0.99")
        if text.strip().lower() in ("off", "none", "null"):
            out[name.strip()] = None
            continue
        try:
            out[name.strip()] = float(text)
        except ValueError:
            raise ConfigError(
                f"--threshold {item!r}: {text!r} is not a number (or 'off')"
            ) from None
    return out


def list_images(source: Path) -> List[Path]:
    """The images of a folder (sorted) or of a .txt list (one path per line, relative to it).

    In a folder, ``*.mask.png`` files are ground-truth class maps (as :mod:`tools.demo.shapes`
    writes them beside each sample), not inputs: they are left out.
    """
    if source.is_dir():
        return sorted(p for p in source.iterdir() if _is_input_image(p))
    if source.suffix == ".txt" and source.is_file():
        lines = source.read_text(encoding="utf-8").splitlines()
        return [absolute(source.parent / line.strip()) for line in lines if line.strip()]
    return []


def _is_input_image(path: Path) -> bool:
    name = path.name.lower()
    return (
        path.suffix.lower() in IMAGE_SUFFIXES and not name.endswith(MASK_SUFFIX) and path.is_file()
    )
