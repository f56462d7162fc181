"""One served model: its engines, its bounded admission count, its queue and its runners,
and the :class:`Job` (one admitted request) that waits in that queue.

A host does not know what a request goes through (that is :mod:`rkserve.pipeline`): each
runner thread owns one engine (one runtime object: on a multi-core NPU, pinned to its own
core), takes jobs from the shared queue one at a time and hands each to the pipeline's
``step`` with its engine, while it records which job it is on and since when, so the loader
can tell a wedged runtime. ``state`` and ``error`` are written by the loader thread only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import protocol
from .engine import Engine, Prepared
from .errors import DeadlineExceeded, ModelUnavailable, Overloaded, RkserveError
from .repository import Entry

log = logging.getLogger("rkserve")
Step = Callable[["ModelHost", "Job", Engine], None]
STATES = ("loading", "ready", "failed", "refused", "stuck")


class Door:
    """How a front end answers its jobs: the reply to a result or to an error, and where it
    goes (``send(envelope, request id, reply)``).

    This one speaks the msgpack protocol; a front end with its own wire subclasses it. A
    reply of None answers nothing (the job is still counted and let go)."""

    def __init__(self, send: Callable[[List[bytes], Any, bytes], None]) -> None:
        self.send = send

    def ok(self, job: Job, body: Dict[str, Any]) -> Optional[bytes]:
        return protocol.ok_reply(job.request.id, body, job.timings())

    def error(self, job: Job, error: RkserveError) -> Optional[bytes]:
        return protocol.error_reply(job.request.id, error, job.timings())


class Job:
    """One admitted infer request; ``finish``/``fail`` answer it, only the first call counts."""

    def __init__(
        self,
        envelope: List[bytes],
        request: protocol.Request,
        data: Any,
        host: ModelHost,
        params: Any,
        deadline: float,
        cost: int,
        door: Optional[Door] = None,
    ) -> None:
        self.door = door  # how it is answered (None: the pipeline's own)
        self.envelope = envelope
        self.request = request
        self.data = data  # what the task prepares: request.input, an image with its header read
        self.host = host
        self.params = params
        self.deadline = deadline  # time.monotonic() value
        self.cost = cost  # bytes of the memory budget it holds until answered
        self.received = time.perf_counter()
        self.prepared: Optional[Prepared] = None
        self.answered = False
        self._lock = threading.Lock()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def deadline_error(self, waiting_for: str) -> DeadlineExceeded:
        total = self.timings()["total"]
        return DeadlineExceeded(
            f"deadline passed after {total:.0f} ms waiting for {waiting_for}; the NPU was not used"
        )

    def timings(self) -> Dict[str, float]:
        stages = dict(self.prepared.timings) if self.prepared else {}
        total = (time.perf_counter() - self.received) * 1000.0
        stages["queue"] = max(0.0, total - sum(stages.values()))
        stages["total"] = total
        return stages

    def claim(self) -> bool:
        """True for the one caller that gets to answer this job."""
        with self._lock:
            if self.answered:
                return False
            self.answered = True
            return True


class ModelHost:
    """A loaded model (or the reason it is not) with its queue and runner thread."""

    def __init__(
        self,
        entry: Entry,
        state: str,
        queue_size: int,
        engines: Sequence[Engine] = (),
        error: Optional[str] = None,
        info: Optional[Dict[str, str]] = None,
    ) -> None:
        self.entry = entry
        self.name = entry.name
        self.engines: List[Engine] = list(engines)  # one per runtime instance (runner)
        # the first instance; prepare and finish use it (pure CPU work)
        self.engine: Optional[Engine] = self.engines[0] if self.engines else None
        self.error = error  # why it is not serving, or why its last reload failed
        self.state = state  # one of STATES; written by the loader thread only
        self.queue_size = queue_size
        self.info = info or {}
        self.pending = 0  # admitted, not yet taken by the runner
        self.stopping = False  # the runners are told to stop: nothing more is taken on
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Optional[Job]] = queue.SimpleQueue()  # C: a cheap hand-off
        self._threads: List[threading.Thread] = []
        self._busy: Dict[int, float] = {}  # runner index -> since when it has a job on the NPU

    @classmethod
    def loading(cls, entry: Entry, queue_size: int) -> ModelHost:
        """Listed while its first version loads: requests are answered model_unavailable."""
        return cls(entry, "loading", queue_size)

    @classmethod
    def unserved(cls, entry: Entry, state: str, error: str, queue_size: int) -> ModelHost:
        """``failed`` or ``refused``, with the reason shown in ``models`` and ``health``."""
        return cls(entry, state, queue_size, error=error)

    @classmethod
    def serving(
        cls, entry: Entry, engines: Sequence[Engine], info: Dict[str, str], queue_size: int
    ) -> ModelHost:
        """Loaded and warmed up: one runner per engine once started."""
        return cls(entry, "ready", queue_size, engines=engines, info=info)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.engine is not None

    @property
    def idle(self) -> bool:
        """Nothing admitted and a runner waiting: work sent now starts at once."""
        return self.pending == 0 and len(self._busy) < len(self.engines)

    def describe(self) -> Dict[str, Any]:
        spec = self.entry.spec
        info: Dict[str, Any] = {
            "name": self.name,
            "ready": self.ready,
            "state": self.state,
            "error": self.error,
        }
        if spec is not None:
            info.update(task=spec.task, labels=len(spec.labels), description=spec.description)
        if self.engine is not None:
            info["backend"] = self.engine.backend.name
            info.update(self.engine.describe())  # input_shape, or a tensor model's inputs
            info["instances"] = len(self.engines)
        info.update(self.info)
        return info

    def unavailable(self) -> ModelUnavailable:
        """Why requests are refused now (``loading``, ``failed``, ``refused``, ``stuck``, or
        this version stopped: replaced by a reload)."""
        if self.stopping:
            return ModelUnavailable(f"model {self.name!r} was replaced or stopped; retry")
        return ModelUnavailable(
            f"model {self.name!r} is {self.state}" + (f": {self.error}" if self.error else "")
        )

    # frontend thread
    def admit(self) -> None:
        """Count one more admitted job, or say why not (not ready, queue full)."""
        if not self.ready:
            raise self.unavailable()
        with self._lock:
            if self.stopping:
                raise self.unavailable()
            if self.pending >= self.queue_size:
                raise Overloaded(
                    f"model {self.name!r} has {self.pending} requests queued (queue_size {self.queue_size}); retry later"
                )
            self.pending += 1

    def release(self) -> None:
        """An admitted job left before reaching the runner (bad image, deadline, drain)."""
        with self._lock:
            self.pending -= 1

    def enqueue(self, job: Job) -> bool:
        """Queue ``job`` for the runners; False once they are told to stop (a job queued
        behind their stop would never be taken)."""
        with self._lock:
            if self.stopping:
                return False
            self._queue.put(job)
            return True

    # runner threads
    def start(self, step: Step) -> None:
        """Run the queue on one thread per engine, one job at a time each through ``step``."""
        for index, engine in enumerate(self.engines):
            thread = threading.Thread(
                target=self._run,
                args=(step, index, engine),
                name=f"npu-{self.name}" + (f"-{index}" if index else ""),
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, step: Step, index: int, engine: Engine) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self.release()
            self._busy[index] = time.monotonic()
            try:
                step(self, job, engine)
            finally:
                self._busy.pop(index, None)

    def ran(self, engine: Engine) -> None:
        """``engine``'s runner is done with the NPU for its job: it only answers it now (a
        cheap finish, or a hand-off to a worker), so the host counts as idle and the next
        job is queued for it, not sent to a worker to be prepared (one hand-off more)."""
        self._busy.pop(self.engines.index(engine), None)

    # loader thread
    def stuck_for(self) -> float:
        """How long the longest-running runner has been on its current job."""
        started = list(self._busy.values())
        return time.monotonic() - min(started) if started else 0.0

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the runners once the queue is empty, then close the backends; False when a
        runner did not stop in time (wedged in the runtime: the backends stay open)."""
        with self._lock:
            self.stopping = True
        for _ in self._threads:
            self._queue.put(None)
        until = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, until - time.monotonic()))
        stopped = not any(t.is_alive() for t in self._threads)
        if stopped:
            for engine in self.engines:
                engine.backend.close()
        return stopped
