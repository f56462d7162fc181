"""One served model: its engine, its bounded admission count, its queue and its runner thread.

A host does not know what a request goes through (that is :mod:`rkserve.pipeline`): its
runner thread takes jobs from the queue one at a time and hands each to the pipeline's
``step`` while it records which job it is on and since when, so the loader can tell a
wedged runtime. Its ``state`` and ``error`` are written by the loader thread only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from .engine import Engine
from .errors import ModelUnavailable, Overloaded
from .repository import Entry

if TYPE_CHECKING:
    from .pipeline import Job

log = logging.getLogger("rkserve")
Step = Callable[["ModelHost", "Job"], None]
STATES = ("loading", "ready", "failed", "refused", "stuck")


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
        self.state = state  # one of STATES; written by the loader thread only
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

    @property
    def idle(self) -> bool:
        """Nothing admitted and the runner waiting: work sent now starts at once."""
        return self.pending == 0 and self.current is None

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

    def unavailable(self) -> ModelUnavailable:
        """Why requests are refused now (``loading``, ``failed``, ``refused``, ``stuck``)."""
        return ModelUnavailable(
            f"model {self.name!r} is {self.state}" + (f": {self.error}" if self.error else "")
        )

    # frontend thread
    def admit(self) -> None:
        """Count one more admitted job, or say why not (not ready, queue full)."""
        if not self.ready:
            raise self.unavailable()
        with self._lock:
            if self.pending >= self.queue_size:
                raise Overloaded(
                    f"model {self.name!r} has {self.pending} requests queued (queue_size {self.queue_size}); retry later"
                )
            self.pending += 1

    def release(self) -> None:
        """An admitted job left before reaching the runner (bad image, deadline, drain)."""
        with self._lock:
            self.pending -= 1

    def enqueue(self, job: Job) -> None:
        self._queue.put(job)

    # runner thread
    def start(self, step: Step) -> None:
        """Run the queue on a thread of its own, one job at a time through ``step``."""
        self._thread = threading.Thread(
            target=self._run, args=(step,), name=f"npu-{self.name}", daemon=True
        )
        self._thread.start()

    def _run(self, step: Step) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self.release()
            self.current, self.busy_since = job, time.monotonic()
            try:
                step(self, job)
            finally:
                self.current, self.busy_since = None, None

    # loader thread
    def stuck_for(self) -> float:
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the runner once its queue is empty, then close the backend; False when the
        runner did not stop in time (wedged in the runtime: the backend stays open)."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        stopped = self._thread is None or not self._thread.is_alive()
        if self.engine is not None and stopped:
            self.engine.backend.close()
        return stopped
