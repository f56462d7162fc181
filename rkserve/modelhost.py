"""One served model: its engine, its bounded queue, and the NPU runner thread that drains it.

A request's journey inside the daemon is a :class:`Job`: admitted by the frontend
(``ModelHost.admit``), prepared on the CPU pool, run here on the runner thread, finished on
the CPU pool, answered exactly once through ``Job.answer``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .engine import Engine, Prepared
from .errors import (
    BackendError,
    DeadlineExceeded,
    InternalError,
    ModelUnavailable,
    Overloaded,
    RkserveError,
)
from .memory import GcGuard
from .protocol import Request
from .repository import Entry

log = logging.getLogger("rkserve")

Answer = Callable[["Job", Optional[Dict[str, Any]], Optional[RkserveError]], None]


def reply_error(exc: Exception, doing: str) -> RkserveError:
    """The error to answer with: ours as it is; anything else is a bug, logged, ``internal``."""
    if isinstance(exc, RkserveError):
        return exc
    log.exception("%s crashed", doing)
    return InternalError(f"{doing} crashed: {type(exc).__name__}")


class Job:
    """One infer request in flight; ``finish``/``fail`` answer it, only the first call counts."""

    def __init__(
        self, envelope: List[bytes], request: Request, deadline: float, answer: Answer
    ) -> None:
        self.envelope = envelope
        self.request = request
        self.received = time.perf_counter()
        self.deadline = deadline  # time.monotonic() value
        self.prepared: Optional[Prepared] = None
        self._answer = answer
        self._lock = threading.Lock()
        self.answered = False

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

    def _claim(self) -> bool:
        with self._lock:
            if self.answered:
                return False
            self.answered = True
            return True

    def finish(self, body: Dict[str, Any]) -> None:
        if self._claim():
            self._answer(self, body, None)

    def fail(self, error: RkserveError) -> None:
        if self._claim():
            self._answer(self, None, error)


class ModelHost:
    """A loaded model (or the reason it is not) with its queue and runner thread."""

    def __init__(
        self,
        entry: Entry,
        engine: Optional[Engine],
        error: Optional[str],
        state: str,
        queue_size: int,
        info: Optional[Dict[str, str]] = None,
    ) -> None:
        self.entry = entry
        self.name = entry.name
        self.engine = engine
        self.error = error  # why it is not serving, or why its last reload failed
        self.state = state  # loading | ready | failed | refused | stuck
        self.queue_size = queue_size
        self.info = info or {}
        self.pending = 0  # admitted, not yet taken by the runner
        self._lock = threading.Lock()
        self._queue: queue.Queue[Optional[Job]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self.busy_since: Optional[float] = None
        self.current: Optional[Job] = None

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.engine is not None

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
        info.update(self.info)
        return info

    # frontend thread
    def admit(self) -> None:
        if not self.ready:
            raise ModelUnavailable(
                f"model {self.name!r} is {self.state}" + (f": {self.error}" if self.error else "")
            )
        with self._lock:
            if self.pending >= self.queue_size:
                raise Overloaded(
                    f"model {self.name!r} has {self.pending} requests queued (queue_size {self.queue_size}); retry later"
                )
            self.pending += 1

    def release(self) -> None:
        """An admitted job left before reaching the runner (bad image, deadline)."""
        with self._lock:
            self.pending -= 1

    # CPU pool
    def enqueue(self, job: Job) -> None:
        self._queue.put(job)

    # runner thread
    def start(
        self,
        submit: Callable[..., Any],
        finish: Callable[[Job, List[np.ndarray]], None],
        guard: Optional[GcGuard] = None,
    ) -> None:
        """Run the queue on a thread; ``guard`` frees the runtime's garbage between calls."""
        self._thread = threading.Thread(
            target=self._run, args=(submit, finish, guard), name=f"npu-{self.name}", daemon=True
        )
        self._thread.start()

    def _run(
        self,
        submit: Callable[..., Any],
        finish: Callable[[Job, List[np.ndarray]], None],
        guard: Optional[GcGuard],
    ) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self.release()
            if job.expired():
                job.fail(job.deadline_error("the NPU"))
                continue
            outputs = self._infer(job)
            if outputs is not None:
                submit(finish, job, outputs)
            if guard is not None:
                guard.tick()

    def _infer(self, job: Job) -> Optional[List[np.ndarray]]:
        assert self.engine is not None and job.prepared is not None
        self.current, self.busy_since = job, time.monotonic()
        try:
            return self.engine.run(job.prepared)
        except Exception as exc:  # a backend bug must not kill the runner
            job.fail(reply_error(exc, f"model {self.name}: inference"))
        finally:
            self.current, self.busy_since = None, None
        return None

    def stuck_for(self) -> float:
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def abandon_current(self, timeout: float) -> None:
        """The runner is wedged in the runtime: answer its job and stop taking work."""
        job = self.current
        self.state = "stuck"
        self.error = f"inference has not returned for {timeout:.0f} s; the runtime is wedged"
        if job is not None:
            job.fail(BackendError(f"model {self.name!r}: {self.error}"))

    def drain_queue(self, error: RkserveError) -> None:
        """Answer everything still queued (a retired or wedged host)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self.release()
                job.fail(error)

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the runner and close the backend."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.engine is not None and (self._thread is None or not self._thread.is_alive()):
            self.engine.backend.close()
