"""Load a running daemon and measure what it sustains: the engine of ``rkserve bench``.

In the spirit of Triton's perf_analyzer: a step is either a closed loop (``concurrency``
workers, each sending its next request when the last one is answered) or an open loop
(requests due at a fixed ``rate``, sent by up to ``concurrency`` workers; latency counts
from when a request was due, so a stalled server cannot hide its queue). Each step warms up,
then measures a duration (the answers inside the window count) or a number of requests. A
request left unanswered for ``timeout`` seconds ends the step (counted as ``unavailable``)::

    plan = Plan(["tcp://board:5555"], "shapes", [{"image": jpeg}], concurrency=[1, 4])
    for step in run_plan(plan):
        print(step.concurrency, step.throughput, step.latency_ms["p99"])

Every worker is a thread with its own :class:`~rkserve.client.Client` (sockets are not
thread-safe). The client's work per request is small next to the daemon's: the step
reports the cores the bench process itself used (``client_cpu``), so a step where the
bench is the bottleneck shows it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import zmq

from ..client import Client
from ..errors import RkserveError
from ..protocol import STAGES

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Plan:
    """What to send, where, and the steps to run."""

    endpoints: Sequence[str]
    model: str
    inputs: Sequence[Dict[str, Any]]  # message fields: {"image": bytes} or {"tensor": {...}}
    params: Dict[str, Any] = field(default_factory=dict)
    concurrency: Sequence[int] = (1,)
    rates: Sequence[float] = ()  # requests/s; empty = closed loop
    duration: float = 5.0  # seconds per step (ignored when requests > 0)
    requests: int = 0  # requests per step
    warmup: float = 1.0  # seconds per step, not measured
    timeout: float = 10.0
    deadline_ms: Optional[int] = None

    def steps(self) -> List[Tuple[int, Optional[float]]]:
        """``(concurrency, rate)`` per step: every rate with the largest concurrency as the
        cap on requests in flight, or every concurrency in a closed loop."""
        if self.rates:
            return [(max(self.concurrency), float(rate)) for rate in self.rates]
        return [(int(c), None) for c in self.concurrency]


@dataclass
class Sample:
    due: float  # perf_counter when the request was due (open loop) or sent (closed loop)
    sent: float
    done: float
    code: str  # "ok" or the error code
    timings: Dict[str, float]


@dataclass
class Step:
    """One step's results; times in milliseconds unless named otherwise."""

    concurrency: int
    rate: Optional[float]
    requests: int
    ok: int
    errors: Dict[str, int]
    seconds: float
    throughput: float  # answered ok per second
    latency_ms: Dict[str, float]  # p50, p90, p99, mean, max over ok replies
    server_ms: Dict[str, float]  # mean of each timing_ms stage over ok replies
    client_cpu: float  # cores the bench process used while measuring
    send_lag_ms: float  # open loop: p99 of how late requests left; 0 in a closed loop


class Schedule:
    """Hands out the requests of one step to the workers (thread-safe)."""

    def __init__(self, plan: Plan, rate: Optional[float], start: float) -> None:
        self.rate = rate
        self.start = start
        self.measure_from = start + plan.warmup
        self.until = self.measure_from + plan.duration
        self.counted = plan.requests > 0  # measure exactly that many, however long it takes
        self.left = plan.requests
        self.index = 0
        self.stopped = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        """No more requests: a reply never came, so the daemon is gone or wedged."""
        self.stopped = True

    def next(self) -> Optional[Tuple[float, bool]]:
        """``(due, keep)`` for the next request, or None when the step is over. A timed step
        keeps every sample (those answered inside the window count); a counted step keeps
        exactly ``requests`` sent after the warm-up."""
        with self._lock:
            if self.stopped:
                return None
            due = self.start + self.index / self.rate if self.rate else time.perf_counter()
            self.index += 1
            if not self.counted:
                return (due, True) if due < self.until else None
            if due < self.measure_from:
                return due, False
            if self.left == 0:
                return None
            self.left -= 1
            return due, True


def run_plan(plan: Plan, on_step: Optional[Callable[[Step], None]] = None) -> Iterator[Step]:
    """Run every step of ``plan`` in turn (one shared ZeroMQ context)."""
    ctx = zmq.Context()
    try:
        for concurrency, rate in plan.steps():
            step = run_step(plan, concurrency, rate, ctx)
            if on_step is not None:
                on_step(step)
            yield step
    finally:
        ctx.destroy(linger=0)


def run_step(
    plan: Plan, concurrency: int, rate: Optional[float], ctx: Optional[zmq.Context] = None
) -> Step:
    samples: List[Sample] = []
    start = time.perf_counter() + 0.05  # let every worker connect first
    schedule = Schedule(plan, rate, start)
    workers = [
        threading.Thread(
            target=_work, args=(plan, n, schedule, samples, ctx), name=f"bench-{n}", daemon=True
        )
        for n in range(concurrency)
    ]
    for worker in workers:
        worker.start()
    _sleep_until(schedule.measure_from)
    cpu = _cpu_seconds()
    if not schedule.counted:
        _sleep_until(schedule.until)
        cpu = _cpu_seconds() - cpu
    for worker in workers:
        worker.join()
    if schedule.counted:
        return summarize(concurrency, rate, samples, _cpu_seconds() - cpu)
    window = (schedule.measure_from, schedule.until)
    return summarize(concurrency, rate, samples, cpu, window)


def _work(
    plan: Plan,
    index: int,
    schedule: Schedule,
    samples: List[Sample],
    ctx: Optional[zmq.Context],
) -> None:
    client = Client(plan.endpoints, timeout=plan.timeout, retries=0, context=ctx)
    base: Dict[str, Any] = {"op": "infer", "model": plan.model, "params": dict(plan.params)}
    if plan.deadline_ms is not None:
        base["deadline_ms"] = plan.deadline_ms
    messages = [{**base, **fields} for fields in plan.inputs]
    try:
        while True:
            ticket = schedule.next()
            if ticket is None:
                return
            due, keep = ticket
            _sleep_until(due)
            sample = _send(client, messages[index % len(messages)], due)
            index += 1
            timed_out = sample.code == "unavailable" and sample.done - sample.sent >= plan.timeout
            if keep or timed_out:  # a timeout counts even in the warm-up: it ends the step
                samples.append(sample)  # list.append is atomic under the GIL
            if timed_out:
                schedule.stop()  # waiting out a timeout per remaining request helps no one
    finally:
        client.close()


def _send(client: Client, message: Dict[str, Any], due: float) -> Sample:
    sent = time.perf_counter()
    try:
        reply = client.call(message)
        code, timings = "ok", dict(reply.get("timing_ms") or {})
    except RkserveError as exc:
        code, timings = exc.code, {}
    return Sample(min(due, sent), sent, time.perf_counter(), code, timings)


def _sleep_until(moment: float) -> None:
    left = moment - time.perf_counter()
    if left > 0:
        time.sleep(left)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def summarize(
    concurrency: int,
    rate: Optional[float],
    samples: Sequence[Sample],
    cpu_seconds: float,
    window: Optional[Tuple[float, float]] = None,
) -> Step:
    """Aggregate one step. With a ``window`` (a timed step) the requests answered inside it
    count, and throughput is their number over its length, as perf_analyzer does; without
    one (a counted step) all samples count, and throughput is the rate of answers between
    the first and the last (so a deep pipeline's fill and drain do not dilute it)."""
    if window is not None:
        samples = [s for s in samples if window[0] <= s.done <= window[1]]
    ok = [s for s in samples if s.code == "ok"]
    errors: Dict[str, int] = {}
    for s in samples:
        if s.code != "ok":
            errors[s.code] = errors.get(s.code, 0) + 1
    seconds, throughput = _rate(samples, len(ok), window)
    latencies = sorted((s.done - s.due) * 1000.0 for s in ok)
    lags = sorted((s.sent - s.due) * 1000.0 for s in samples) if rate else []
    return Step(
        concurrency=concurrency,
        rate=rate,
        requests=len(samples),
        ok=len(ok),
        errors=errors,
        seconds=seconds,
        throughput=throughput,
        latency_ms=latency_summary(latencies),
        server_ms=_stage_means(ok),
        client_cpu=cpu_seconds / seconds if seconds > 0 else 0.0,
        send_lag_ms=percentile(lags, 99) if lags else 0.0,
    )


def _rate(
    samples: Sequence[Sample], ok: int, window: Optional[Tuple[float, float]]
) -> Tuple[float, float]:
    """``(seconds, ok answers per second)``."""
    if window is not None:
        seconds = window[1] - window[0]
        return seconds, ok / seconds if seconds > 0 else 0.0
    if not samples:
        return 0.0, 0.0
    done = sorted(s.done for s in samples)
    if len(done) == 1:
        seconds = done[0] - samples[0].sent
        return seconds, ok / seconds if seconds > 0 else 0.0
    seconds = done[-1] - done[0]
    intervals = (len(done) - 1) * ok / len(done)  # answer intervals that ended in success
    return seconds, intervals / seconds if seconds > 0 else 0.0


def latency_summary(sorted_ms: Sequence[float]) -> Dict[str, float]:
    if not sorted_ms:
        sorted_ms = [math.nan]
    summary = {f"p{p}": percentile(sorted_ms, p) for p in PERCENTILES}
    summary["mean"] = sum(sorted_ms) / len(sorted_ms)
    summary["max"] = sorted_ms[-1]
    return summary


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def _stage_means(ok: Sequence[Sample]) -> Dict[str, float]:
    means: Dict[str, float] = {}
    for stage in STAGES:
        values = [s.timings[stage] for s in ok if stage in s.timings]
        if values:
            means[stage] = sum(values) / len(values)
    return means
