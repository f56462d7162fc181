"""Model spec + backend + task → ``infer()``, with per-stage timings.

The engine knows no task: it looks the model's task up by name (:mod:`rkserve.tasks`) and
calls its functions. The three stages are separate methods so the daemon can run them on
different threads (``run`` on the NPU runner; prepare and finish on the CPU pool or the
runner, see :mod:`rkserve.pipeline`)::

    engine = Engine(spec, open_backend("onnx", spec))
    result = engine.infer(jpeg_bytes, {"top_k": 3})
    result.result["classes"][0]["label"], result.timings["inference"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .backends import Backend
from .errors import BackendError
from .kernels import image
from .spec import ModelSpec
from .tasks import Prepared, get_task
from .tasks.base import elapsed_ms

__all__ = ["Engine", "Prepared", "Result"]


@dataclass
class Result:
    result: Dict[str, Any]
    timings: Dict[str, float]  # milliseconds per stage
    warnings: List[str] = field(default_factory=list)  # the warm-up's review, for the log


class Engine:
    def __init__(
        self, spec: ModelSpec, backend: Backend, max_pixels: int = image.MAX_PIXELS
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.max_pixels = max_pixels
        self.impl = get_task(spec.task)  # the task module (rkserve.tasks.<task>)
        self.impl.check(spec, backend)  # refuse at load a model the task cannot read

    @property
    def task(self) -> str:
        return self.spec.task

    def parse_params(self, raw: Optional[Mapping[str, Any]] = None) -> Any:
        """Validate the wire's ``params`` map with the task's rules."""
        return self.impl.parse_params(dict(raw or {}), self.spec)

    def prepare(self, data: Any, params: Any) -> Prepared:
        """The request's input (image bytes or array, or named tensors) → model inputs."""
        return self.impl.prepare(data, self.spec, self.backend, params, self.max_pixels)

    def run(self, prepared: Prepared) -> List[np.ndarray]:
        started = time.perf_counter()
        outputs = self.backend.run(prepared.tensors)
        prepared.timings["inference"] = elapsed_ms(started)
        if not outputs or any(o is None for o in outputs):
            raise BackendError(
                f"{self.backend.name} backend returned no outputs for {self.spec.name!r}"
            )
        return outputs

    def finish(self, prepared: Prepared, outputs: Sequence[np.ndarray]) -> Result:
        started = time.perf_counter()
        result = self.impl.finish(outputs, prepared, self.spec)
        prepared.timings["postprocess"] = elapsed_ms(started)
        return Result(result, prepared.timings)

    def infer(self, data: Any, params: Any = None) -> Result:
        """All three stages on the calling thread; ``params`` is the wire's map or parsed."""
        if params is None or isinstance(params, Mapping):
            params = self.parse_params(params)
        prepared = self.prepare(data, params)
        return self.finish(prepared, self.run(prepared))

    def describe(self) -> Dict[str, Any]:
        """The task's view of the model's inputs and outputs, for ``models``."""
        return self.impl.describe(self.spec, self.backend)

    def warm_up(self) -> Result:
        """One inference on the task's own warm-up input: a broken model fails at load.
        ``warnings`` holds the task's review of what the model made of it."""
        prepared = self.prepare(
            self.impl.warmup_input(self.spec, self.backend), self.parse_params(None)
        )
        outputs = self.run(prepared)
        result = self.finish(prepared, outputs)
        result.warnings = self.impl.review_warmup(outputs, self.spec, self.backend)
        return result
