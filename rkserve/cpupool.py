"""The CPU pool: worker threads that run a request's CPU stages, the later stage first.

A thread pool that takes work first in, first out lets a burst's decodes queue ahead of the
post-processing of the jobs the NPU has already run: with 16 large images at once, every
reply waited for the last decode and all of them left together at the end of the burst.
Here each task has a stage, and a worker always takes the task of the latest stage waiting
(post-processing before decoding; first in, first out within a stage), so a job that is
done on the NPU leaves as soon as a worker is free, and replies leave in the order their
jobs finish.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from typing import Any, Callable, List, Optional, Tuple

FINISH, PREPARE = 0, 1  # stages, the most urgent first: finishing a job frees its reply and memory

log = logging.getLogger("rkserve")
Task = Tuple[int, int, Optional[Callable[..., Any]], Tuple[Any, ...]]


class CpuPool:
    """``workers`` threads taking ``(stage, order)``-ordered tasks; ``submit`` after
    ``shutdown`` raises :class:`RuntimeError`, as :class:`concurrent.futures.Executor` does."""

    def __init__(self, workers: int, name: str = "cpu") -> None:
        self._tasks: queue.PriorityQueue[Task] = queue.PriorityQueue()
        self._order = itertools.count()  # first in, first out within a stage
        self._lock = threading.Lock()
        self._stopped = False
        self._threads: List[threading.Thread] = [
            threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, stage: int, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a worker, before every task of a later stage."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the CPU pool is shut down")
            self._tasks.put((stage, next(self._order), fn, args))

    def shutdown(self, wait: bool = True) -> None:
        """Take no more tasks; the workers run those already queued, then exit."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                for _ in self._threads:  # after every queued task: the stage sorts last
                    self._tasks.put((PREPARE + 1, next(self._order), None, ()))
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while True:
            _, _, fn, args = self._tasks.get()
            if fn is None:
                return
            try:
                fn(*args)  # the pipeline's stages answer their own errors
            except Exception:  # a bug must not cost the pool a worker
                log.exception("a CPU pool task crashed")
