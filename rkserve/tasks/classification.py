"""Task ``classification``: an image in, the top-k classes with labels out.

model.yaml: ``input`` (:mod:`.vision`), ``output.kind`` (``probabilities`` | ``logits``),
``output.label_offset``, ``output.top_k``. Params: ``top_k``. Result:
``{"classes": [{"index", "label", "score"}, ...]}``, best first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import BadRequest, ConfigError
from ..protocol import show
from . import classify, vision
from .base import Prepared, reject_unknown

if TYPE_CHECKING:
    from ..backends import Backend, TensorSpec
    from ..spec import ModelSpec, SpecReader

NAME = "classification"
PARAMS = ("top_k",)
MAX_TOP_K = 1000


@dataclass(frozen=True)
class Params:
    top_k: int = 5


def read_spec(top: SpecReader) -> Dict[str, Any]:
    output = top.section("output")
    return {
        **vision.read_input(top.section("input"), vision.CROP_MODES),
        "output": output.choice("kind", ("probabilities", "logits"), "probabilities"),
        "label_offset": output.integer("label_offset", 0),
        "top_k": output.integer("top_k", 5, minimum=1, maximum=MAX_TOP_K),
    }


def check(spec: ModelSpec, backend: Backend) -> None:
    """One image input; one output of N scores (``[1,N]``, ``[N]`` or ``[1,N,1,1]``); N equal
    to the labels (+ ``label_offset``) when model.yaml has labels."""
    vision.check_input(spec, backend)
    if not backend.outputs:
        return
    vision.refuse_detector(spec, backend)
    scores = score_count(backend.outputs)
    if scores is None:
        raise ConfigError(
            f"{spec.spec_path}: task classification reads one output of N class scores "
            f"([1, N]), but the {backend.name} model has {len(backend.outputs)} output(s): "
            f"{vision.shapes(backend.outputs)}"
        )
    if spec.labels and scores != len(spec.labels) + spec.label_offset:
        raise ConfigError(
            f"{spec.spec_path}: labels: {len(spec.labels)} labels (+ label_offset "
            f"{spec.label_offset}) but the model outputs {scores} scores"
        )
    if scores is not None and scores <= spec.label_offset:
        raise ConfigError(
            f"{spec.spec_path}: output.label_offset: {spec.label_offset} but the model "
            f"outputs {scores} scores: no class would be left"
        )
    _check_quantization(spec, backend.outputs[0], backend.name)


def _check_quantization(spec: ModelSpec, output: TensorSpec, backend: str) -> None:
    """Integer scores mean nothing without their scale and zero point: refuse, saying why."""
    if output.dtype.startswith(("float", "bfloat")) or output.quantization is not None:
        return
    raise ConfigError(
        f"{spec.spec_path}: the {backend} model's output {output.name!r} is {output.dtype}, "
        "with no scale and zero point rkserve can read (a QuantizeLinear with constant "
        "ones), so its values are not scores: export the model with a float output, or "
        "end it in QuantizeLinear"
    )


def score_count(outputs: Sequence[Any]) -> Optional[int]:
    """N for one output holding N scores (at most one dimension above 1), else None."""
    if len(outputs) != 1:
        return None
    shape = tuple(outputs[0].shape)
    if sum(1 for d in shape if d != 1) > 1:
        return None
    return int(np.prod(shape)) if shape else None


def parse_params(raw: Mapping[str, Any], spec: ModelSpec) -> Params:
    reject_unknown(raw, PARAMS, NAME)
    top_k = raw.get("top_k", spec.top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise BadRequest(f"params.top_k must be an integer 1..{MAX_TOP_K}, got {show(top_k)}")
    return Params(top_k)


def prepare(
    data: Any, spec: ModelSpec, backend: Backend, params: Params, max_pixels: int
) -> Prepared:
    prepared = vision.prepare_image(data, spec, backend.raw_input, params, max_pixels, keep=False)
    prepared.context = _quantization(backend)  # finish dequantizes integer scores with it
    return prepared


def _quantization(backend: Backend) -> Optional[Tuple[float, int]]:
    return backend.outputs[0].quantization if backend.outputs else None


def finish(outputs: Sequence[np.ndarray], prepared: Prepared, spec: ModelSpec) -> Dict[str, Any]:
    scores = classify.class_scores(outputs[0], spec.output, prepared.context)
    top = classify.top_k(scores, prepared.params.top_k, spec.labels, spec.label_offset)
    return {"classes": top}


def review_warmup(outputs: Sequence[np.ndarray], spec: ModelSpec, backend: Backend) -> List[str]:
    """Scores model.yaml calls probabilities that do not look like them (logits served as
    probabilities would show as scores like 16.9), with the figures."""
    if spec.output != "probabilities":
        return []
    quantization = _quantization(backend)
    scores = classify.class_scores(outputs[0], spec.output, quantization)
    why = classify.not_probabilities(scores, quantization[0] if quantization else 0.0)
    if why is None:
        return []
    return [
        f"output.kind is probabilities, but the warm-up's {scores.size} scores do not look "
        f"like them: {why}; if the model outputs logits, set output.kind: logits in "
        f"{spec.spec_path}"
    ]


def warmup_input(spec: ModelSpec, backend: Backend) -> np.ndarray:
    return vision.warmup_image(spec)


def describe(spec: ModelSpec, backend: Backend) -> Dict[str, Any]:
    return vision.describe(spec)
