"""Hybrid quantization: keep the recipe's ``hybrid_fp16_layers`` in float16, the rest int8.

rknn-toolkit2 does it in two calls on the same ``RKNN`` object: ``hybrid_quantization_step1``
quantizes everything and writes ``<stem>.model``, ``<stem>.data`` and
``<stem>.quantization.cfg`` into the *current directory*; the ``custom_quantize_layers`` map of
that cfg names the layer outputs to keep in another dtype; ``hybrid_quantization_step2``
builds from the edited files. The names are the keys of the cfg's ``quantize_parameters``
(tensor names such as ``Relu6__107:0``, as ``--analysis`` lists them).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import yaml

from ..errors import ConfigError
from .toolkit import Toolkit

if TYPE_CHECKING:
    from ..spec import ModelSpec
    from .recipe import Recipe


def build_hybrid(
    kit: Toolkit,
    recipe: Recipe,
    model_path: Path,
    dataset: Optional[str],
    work: Path,
    spec: ModelSpec,
) -> None:
    """Step 1, mark the layers float16 in the cfg, step 2; the model stays in ``kit`` for the
    simulator. Runs in ``work`` as the current directory (the flow builds there)."""
    stem = model_path.stem
    kit.call("hybrid_quantization_step1", kit.rknn.hybrid_quantization_step1, dataset=dataset)
    cfg = work / f"{stem}.quantization.cfg"
    text = cfg.read_text(encoding="utf-8")
    known = list((yaml.safe_load(text) or {}).get("quantize_parameters") or {})
    check_layers(recipe.hybrid_fp16_layers, known, spec)
    cfg.write_text(mark_float16(text, recipe.hybrid_fp16_layers), encoding="utf-8")
    kit.call(
        "hybrid_quantization_step2",
        kit.rknn.hybrid_quantization_step2,
        model_input=f"{stem}.model",
        data_input=f"{stem}.data",
        model_quantization_cfg=cfg.name,
    )


def check_layers(wanted: Sequence[str], known: Sequence[str], spec: ModelSpec) -> None:
    """Every requested layer must be a quantized tensor of the model; suggest near names."""
    for name in wanted:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = (
                f"; did you mean {', '.join(near)}?"
                if near
                else " (run with --analysis to list them)"
            )
            raise ConfigError(
                f"{spec.spec_path}: convert.hybrid_fp16_layers: no layer output {name!r}{hint}"
            )


def mark_float16(cfg_text: str, layers: Sequence[str]) -> str:
    """Fill the cfg's ``custom_quantize_layers`` (JSON-quoted keys: the names hold ``;`` and ``:``)."""
    entries: List[str] = [f"    {json.dumps(name)}: float16\n" for name in layers]
    head = "custom_quantize_layers: {}\n"
    if head not in cfg_text:
        raise ConfigError(
            "rknn-toolkit2 wrote a quantization.cfg without 'custom_quantize_layers: {}'"
        )
    return cfg_text.replace(head, "custom_quantize_layers:\n" + "".join(entries), 1)
