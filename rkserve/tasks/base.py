"""What every task provides, and the request state passed between its stages.

A task is one module in ``rkserve/tasks/`` named after it (``classification.py``...) with the
module-level functions of :class:`Task`, registered by name in ``rkserve.tasks.TASKS``. The
engine calls them in this order; nothing else in rkserve knows what a task does::

    fields = task.read_spec(reader)              # model.yaml → ModelSpec fields (load)
    task.check(spec, backend)                    # the model file fits the task? (load)
    params = task.parse_params(raw, spec)        # the wire's params (frontend thread)
    prepared = task.prepare(data, spec, backend, params, max_pixels)   # CPU pool
    outputs = backend.run(prepared.tensors)      # NPU runner (the engine does this)
    result = task.finish(outputs, prepared, spec)                      # CPU pool

``warmup_input`` gives the load-time warm-up its input, ``review_warmup`` looks at what the
model made of it (warnings for the log), ``describe`` adds to the model's entry in the
``models`` reply, and ``fake`` says what the fake backend answers for the task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import BadRequest

if TYPE_CHECKING:
    from ..backends import Backend, FakeModel
    from ..spec import ModelSpec, SpecReader

try:  # Python 3.8 has Protocol in typing
    from typing import Protocol
except ImportError:  # pragma: no cover
    from typing_extensions import Protocol  # type: ignore[assignment]


@dataclass
class Prepared:
    """A request after ``prepare``: the backend's input tensors and what ``finish`` needs."""

    tensors: List[np.ndarray]  # one per model input, in the model's order
    params: Any  # what the task's parse_params returned
    timings: Dict[str, float] = field(default_factory=dict)  # ms: decode, preprocess
    context: Any = None  # the task's own: e.g. where the image sits in the model input
    finish_pixels: int = 0  # source pixels finish maps a result onto or draws on


class Task(Protocol):
    """The functions a task module defines (a module satisfies this protocol)."""

    def read_spec(self, top: SpecReader) -> Dict[str, Any]:
        """This task's sections of model.yaml → keyword arguments of ``ModelSpec``."""

    def check(self, spec: ModelSpec, backend: Backend) -> None:
        """Refuse (:class:`ConfigError`) a model whose real inputs/outputs the task cannot read,
        saying what the model has and what the task needs."""

    def parse_params(self, raw: Mapping[str, Any], spec: ModelSpec) -> Any:
        """Validate the wire's ``params`` map (:class:`BadRequest` on any unknown key)."""

    def prepare(
        self, data: Any, spec: ModelSpec, backend: Backend, params: Any, max_pixels: int
    ) -> Prepared:
        """A request's input (image bytes, an image array or named tensors) → model inputs."""

    def finish(self, outputs: Sequence[np.ndarray], prepared: Prepared, spec: ModelSpec) -> Any:
        """The model's outputs → the reply's ``result`` map."""

    def warmup_input(self, spec: ModelSpec, backend: Backend) -> Any:
        """An input ``prepare`` accepts, run once at load so a broken model fails then."""

    def review_warmup(
        self, outputs: Sequence[np.ndarray], spec: ModelSpec, backend: Backend
    ) -> List[str]:
        """Warnings about the warm-up's outputs (e.g. "probabilities" that are not), logged
        at load; the model serves all the same."""

    def describe(self, spec: ModelSpec, backend: Backend) -> Dict[str, Any]:
        """What a client sends and gets back, added to the model's entry in ``models``."""

    def fake(self, spec: ModelSpec, classes: Optional[int]) -> FakeModel:
        """What the fake backend plays for this model: its tensors and documented outputs
        (``classes`` overrides the class count model.yaml gives)."""


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def reject_unknown(raw: Mapping[str, Any], known: Sequence[str], task: str) -> None:
    """Unknown ``params`` keys are an error: a typo must not pass silently."""
    # keys may mix str and bytes (msgpack allows both): sort their names, not the keys
    unknown = sorted(str(k)[:40] for k in set(raw) - set(known))[:10]
    if unknown:
        names = ", ".join(known) or "none"
        raise BadRequest(f"unknown params {unknown} for a {task} model; known: {names}")
