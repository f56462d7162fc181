"""Memory hygiene for a process that serves for months.

Two things make a long-running rkserve grow without leaking a single Python object:

- **Garbage in reference cycles from the runtime.** RKNNLite leaves ~42 kB per
  ``inference()`` call in reference cycles (lite2 2.3.2; a ``gc.collect()`` every few calls
  cured it). CPython starts a collection after 700 new container objects, not after so many
  bytes, so a runtime that makes few objects holding large buffers piles up tens of
  megabytes between collections, and garbage that was still referenced during a young
  collection (a runtime that keeps its last buffers until the next call) waits for a full
  collection, which a busy process may not run for hours. :class:`GcGuard` runs a full
  collection every ``every`` inferences. That is cheap because :func:`settle` moves
  everything that exists once the models are loaded (modules, models, ~36 000 objects) into
  the permanent generation, so a collection only walks what requests created since.
- **glibc keeping freed buffers.** After a large buffer is freed, glibc raises its mmap
  threshold (up to 32 MB), so later 1-16 MB messages and images come from per-thread heaps
  that are kept: measured, a stream of 1 MB messages took the daemon from 69 to 185 MB.
  :func:`pin_mmap_threshold` restores the fixed 128 kB threshold (RSS stayed at 68 MB);
  buffers above it are mapped and unmapped, a few page faults each.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import platform
import time

log = logging.getLogger("rkserve")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value


class GcGuard:
    """Call :meth:`tick` after each inference; ``every=0`` turns the guard off."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.calls = 0
        self.collections = 0
        self.seconds = 0.0  # time spent collecting: the guard's cost

    def tick(self) -> None:
        if self.every <= 0:
            return
        self.calls += 1  # several runner threads may race here; a lost count is harmless
        if self.calls % self.every:
            return
        started = time.perf_counter()
        gc.collect()
        self.collections += 1
        self.seconds += time.perf_counter() - started


def settle() -> None:
    """Collect everything, then freeze what survives (call once models are (re)loaded).

    Unfreezing first lets objects frozen last time (a model replaced since) be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (unless ``MALLOC_MMAP_THRESHOLD_`` already sets it)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        done = False
    if not done:
        log.warning("could not pin the malloc mmap threshold; memory may grow with large messages")
    return done
