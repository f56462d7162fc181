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
from ..kernels import classify
from ..protocol import show
from . import vision
from .base import Prepared, reject_unknown

if TYPE_CHECKING:
    from ..backends import Backend, FakeModel, TensorSpec
    from ..spec import ModelSpec, SpecReader

NAME = "classification"
PARAMS = ("top_k",)
MAX_TOP_K = 1000


@dataclass(frozen=True)
class Config:
    """model.yaml's ``output`` section of a classifier."""

    kind: str = "probabilities"  # probabilities | logits (softmax applied here)
    label_offset: int = 0  # output index - label_offset = label index
    top_k: int = 5  # the default of params.top_k


@dataclass(frozen=True)
class Params:
    top_k: int = 5


def read_spec(top: SpecReader) -> Dict[str, Any]:
    output = top.section("output")
    config = Config(
        kind=output.choice("kind", ("probabilities", "logits"), "probabilities"),
        label_offset=output.integer("label_offset", 0),
        top_k=output.integer("top_k", 5, minimum=1, maximum=MAX_TOP_K),
    )
    return {**vision.read_input(top.section("input"), vision.CROP_MODES), "task_config": config}


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
    offset = spec.task_config.label_offset
    if spec.labels and scores != len(spec.labels) + offset:
        raise ConfigError(
            f"{spec.spec_path}: labels: {len(spec.labels)} labels (+ label_offset "
            f"{offset}) but the model outputs {scores} scores"
        )
    if scores is not None and scores <= offset:
        raise ConfigError(
            f"{spec.spec_path}: output.label_offset: {offset} but the model "
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
    top_k = raw.get("top_k", spec.task_config.top_k)
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
    config: Config = spec.task_config
    scores = classify.class_scores(outputs[0], config.kind, prepared.context)
    top = classify.top_k(scores, prepared.params.top_k, spec.labels, config.label_offset)
    return {"classes": top}


def review_warmup(outputs: Sequence[np.ndarray], spec: ModelSpec, backend: Backend) -> List[str]:
    """Scores model.yaml calls probabilities that do not look like them (logits served as
    probabilities would show as scores like 16.9), with the figures."""
    if spec.task_config.kind != "probabilities":
        return []
    quantization = _quantization(backend)
    scores = classify.class_scores(outputs[0], "probabilities", quantization)
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


def fake(spec: ModelSpec, classes: Optional[int]) -> FakeModel:
    """Scores with ``sum(input bytes) % classes`` the clear winner (softmaxed for
    ``output.kind: probabilities``)."""
    config: Config = spec.task_config
    count = classes or len(spec.labels) + config.label_offset

    ranks = np.linspace(0.0, 1.0, count, dtype=np.float32)[::-1].copy()  # once, not per call

    def answer(tensor: np.ndarray, count: int) -> List[np.ndarray]:
        logits = ranks.copy()
        logits[vision.pixel_sum_class(tensor, count)] = 4.0
        scores = classify.softmax(logits) if config.kind == "probabilities" else logits
        return [scores[None]]

    return vision.fake_image_model(spec, count, [(1, count)], answer)
