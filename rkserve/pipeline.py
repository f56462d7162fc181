"""A request's whole path inside the daemon: admit → prepare → run → finish → answer.

The frontend thread calls :meth:`Pipeline.admit`; from there a :class:`Job` is owned by
whoever holds it, and answered exactly once::

    admit (frontend) ── runner idle ──────────────▶ model queue ─▶ runner: prepare, run
          │                                                                 │
          └─ otherwise ─▶ CPU pool: prepare ─▶ model queue ─▶ runner: run ──┤
                                                                            ▼
                  finish: on the runner when cheaper than a hand-off, else on the pool
                                                                            ▼
                                answer: the reply, to the frontend's outbox (one hop)

Every admitted job is in ``jobs`` until it is answered, so a drain answers each one
wherever it waits (CPU pool, model queue, NPU), and nothing starts once the pipeline stops.
Admission holds three bounds: the model's ``queue_size``, the daemon-wide memory budget
(estimated from the image's header before anything is decoded) and the drain. A job is
answered through its :class:`Door`: the msgpack protocol's by default, or the one a front
end with its own wire (Frigate's) admits it with.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from . import protocol
from .config import Settings
from .cpupool import FINISH, PREPARE, CpuPool
from .engine import Engine
from .errors import (
    InternalError,
    Overloaded,
    RkserveError,
    TooLarge,
    Unavailable,
    UnknownModel,
)
from .kernels.image import Encoded, Header, check_pixels, encoded
from .memory import GcGuard
from .metrics import Metrics
from .modelhost import Door, Job, ModelHost

log = logging.getLogger("rkserve")
Send = Callable[[List[bytes], Any, bytes], None]  # (envelope, request id, reply)
INLINE_ELEMENTS = 65_536  # finishing this much output costs less than a hand-off (~0.1 ms)
INPUT_COPIES = 3  # a named tensor input: the message's bytes, a cast, a normalised copy


def reply_error(exc: BaseException, doing: str) -> RkserveError:
    """The error to answer with: ours as it is; anything else is a bug, logged, ``internal``."""
    if isinstance(exc, RkserveError):
        return exc
    log.error("%s crashed", doing, exc_info=exc)
    return InternalError(f"{doing} crashed: {type(exc).__name__}")


class Pipeline:
    """Admission, the CPU pool and the stages; ``send`` hands a reply to the frontend."""

    def __init__(self, settings: Settings, metrics: Metrics, send: Send) -> None:
        self.settings = settings
        self.metrics = metrics
        self.door = Door(send)
        self.pool = CpuPool(settings.workers or os.cpu_count() or 2)
        self.gc_guard = GcGuard(settings.gc_every)
        self.budget = int(settings.memory_budget_mb * 2**20)
        self.held = 0  # bytes of the budget admitted jobs hold
        self.jobs: Dict[int, Job] = {}  # admitted and not answered, by id(job)
        self._lock = threading.Lock()
        self.stopped = False

    # frontend thread ---------------------------------------------------------------------
    def admit(
        self,
        envelope: List[bytes],
        request: protocol.Request,
        hosts: Mapping[str, ModelHost],
        door: Optional[Door] = None,
    ) -> Job:
        """Take an infer request on, or raise the error that answers it at once; ``door``
        answers it (default: the msgpack protocol's)."""
        host = hosts.get(request.model)
        if host is None:
            known = ", ".join(hosts) or "none"
            raise UnknownModel(f"no model named {protocol.show(request.model)} (models: {known})")
        if host.engine is None or not host.ready:
            raise host.unavailable()
        params = host.engine.parse_params(request.params)
        data = request.input if request.image is None else encoded(request.image)
        header = _header(data, self.settings.max_pixels)
        cost = _cost(request, params, header, host.engine.backend.raw_input)
        deadline = time.monotonic() + (request.deadline_ms or self.settings.deadline_ms) / 1000.0
        job = Job(envelope, request, data, host, params, deadline, cost, door or self.door)
        self._hold(job)
        try:
            idle = host.idle
            host.admit()
        except RkserveError:
            self._drop(job)
            raise
        if not idle:
            self.pool.submit(PREPARE, self._prepare, job)
        elif not host.enqueue(job):  # the runner prepares it itself: one hand-off fewer
            host.release()
            self._drop(job)
            raise host.unavailable()
        return job

    def _hold(self, job: Job) -> None:
        with self._lock:
            if self.stopped:
                raise Unavailable("the server is shutting down")
            if job.cost > self.budget:  # never admitted, however idle the daemon
                raise TooLarge(
                    f"this request needs {job.cost / 2**20:.0f} MB to decode and process (its "
                    f"image's size and kind), more than the daemon's memory budget of "
                    f"{self.budget / 2**20:.0f} MB (memory_budget_mb)"
                )
            if self.held + job.cost > self.budget and self.held > 0:
                raise Overloaded(
                    f"the daemon's memory budget is in use ({self.held / 2**20:.0f} of "
                    f"{self.budget / 2**20:.0f} MB for images in flight; this one needs "
                    f"{job.cost / 2**20:.0f} MB); retry later"
                )
            self.held += job.cost
            self.jobs[id(job)] = job

    def _drop(self, job: Job) -> None:
        with self._lock:
            self.held -= job.cost
            self.jobs.pop(id(job), None)

    # CPU pool ----------------------------------------------------------------------------
    def _prepare(self, job: Job) -> None:
        host = job.host
        if job.answered or self.stopped:
            host.release()  # answered by a drain or a wedge while it waited for a worker
            return
        if self._prepared(job) and not host.enqueue(job):
            host.release()  # its version was retired meanwhile: no runner will take it
            self.fail(job, host.unavailable())

    def _prepared(self, job: Job, on_runner: bool = False) -> bool:
        """Decode and preprocess (on a CPU worker, or on the runner that took the job idle);
        False when the job was answered instead."""
        host = job.host
        try:
            if job.expired():
                raise job.deadline_error("the NPU" if on_runner else "a CPU worker")
            assert host.engine is not None
            job.prepared = host.engine.prepare(job.data, job.params)
            return True
        except Exception as exc:
            if not on_runner:
                host.release()  # a runner released it as it took it; a worker did not
            self.fail(job, reply_error(exc, f"model {host.name}: preprocessing"))
            return False

    # runner thread -----------------------------------------------------------------------
    def step(self, host: ModelHost, job: Job, engine: Engine) -> None:
        """The runner's part: (prepare,) run on its ``engine``, and finish when that is cheap;
        never raises (a runner that died would leave its queue unanswered)."""
        try:
            self._step(host, job, engine)
        except Exception as exc:
            self.fail(job, reply_error(exc, f"model {host.name}: the runner"))

    def _step(self, host: ModelHost, job: Job, engine: Engine) -> None:
        if job.answered or self.stopped:
            return
        if job.prepared is None and not self._prepared(job, on_runner=True):
            return
        if job.expired():
            self.fail(job, job.deadline_error("the NPU"))
            return
        assert job.prepared is not None
        try:
            outputs = engine.run(job.prepared)
        except Exception as exc:  # a backend bug must not kill the runner
            self.fail(job, reply_error(exc, f"model {host.name}: inference"))
            return
        finally:
            self.gc_guard.tick()
        host.ran(engine)
        if self._cheap(job, outputs):
            self._finish(job, outputs)
            return
        try:
            self.pool.submit(FINISH, self._finish, job, outputs)
        except RuntimeError:  # the pool stopped under us: the drain answers the job
            self.fail(job, Unavailable("the server stopped before this request finished"))

    @staticmethod
    def _cheap(job: Job, outputs: Sequence[np.ndarray]) -> bool:
        """Finishing costs less than a hand-off: small outputs, and no large image to map a
        result back onto or draw on (a classifier's top-k of a 1080p frame is cheap; a
        segmentation map resized to it is not)."""
        assert job.prepared is not None
        return sum(int(o.size) for o in outputs) + job.prepared.finish_pixels <= INLINE_ELEMENTS

    # runner or CPU pool ------------------------------------------------------------------
    def _finish(self, job: Job, outputs: Sequence[np.ndarray]) -> None:
        if job.answered:
            return
        host = job.host
        try:
            assert host.engine is not None and job.prepared is not None
            result = host.engine.finish(job.prepared, outputs)
            body = {"model": host.name, "task": host.engine.task, "result": result.result}
            reply = self._door(job).ok(job, body)  # before the claim
        except Exception as exc:
            self.fail(job, reply_error(exc, f"model {host.name}: postprocessing"))
            return
        if job.claim():
            self._answer(job, reply, "ok")

    def fail(self, job: Job, error: RkserveError) -> None:
        """Answer ``job`` with ``error`` unless something answered it first (any thread)."""
        if job.claim():
            self._answer(job, self._door(job).error(job, error), error.code)

    def _door(self, job: Job) -> Door:
        return job.door or self.door

    def _answer(self, job: Job, reply: Optional[bytes], code: str) -> None:
        try:
            self.metrics.observe(job.request.model, code, job.timings())
            if reply is not None:
                self._door(job).send(job.envelope, job.request.id, reply)
        finally:
            self._drop(job)  # after the send: a drain that sees no jobs has sent every reply

    # drain (frontend thread) and the loader ----------------------------------------------
    def fail_all(self, error: RkserveError, host: Optional[ModelHost] = None) -> int:
        """Answer every admitted job (of ``host`` only, if given) with ``error``."""
        with self._lock:
            jobs = [j for j in self.jobs.values() if host is None or j.host is host]
        for job in jobs:
            self.fail(job, error)
        return len(jobs)

    def stop(self) -> None:
        """Nothing starts from now on; wait for the CPU work already running (bounded: one
        decode or post-processing per worker; queued tasks see ``stopped`` and return)."""
        with self._lock:
            self.stopped = True
        self.pool.shutdown(wait=True)

    @property
    def inflight(self) -> int:
        return len(self.jobs)


def _header(data: Any, max_pixels: int) -> Optional[Header]:
    """What the request's image header (or its pixels' shape) says, None without an image
    or when the header cannot be read (refused before decoding); an image over
    ``max_pixels`` is refused here, as the decoder would refuse it."""
    header: Optional[Header] = None
    if isinstance(data, Encoded):
        header = data.header
    elif isinstance(data, np.ndarray) and data.ndim >= 2:
        header = Header(int(data.shape[1]), int(data.shape[0]))
    if header is not None and header.width * header.height > max_pixels:
        check_pixels(header.width, header.height, max_pixels)
    return header


def _cost(
    request: protocol.Request, params: Any, header: Optional[Header], raw: bool = True
) -> int:
    """Bytes the request may need at its peak: what its image's header says it costs to
    decode and process (an overlay keeps the image and draws on it), or a few copies of its
    named tensors (cast, normalised)."""
    if request.inputs is not None:
        return sum(_input_cost(t.array, raw) for t in request.inputs.tensors)
    if header is None:
        return 0
    return header.working_bytes(overlay=bool(getattr(params, "overlay", False)))


def _input_cost(array: np.ndarray, raw: bool) -> int:
    """A named input's message bytes and its working copies: as sent for the NPU, float32 for
    an ONNX twin (a uint8 input's cast and normalised copies are 4 bytes an element: its
    peak was 5-9x the bytes sent, where 3x was counted)."""
    copy = array.nbytes if raw else array.size * max(array.itemsize, 4)
    return int(array.nbytes + (INPUT_COPIES - 1) * copy)
