"""The CPU pool runs the later stage first, in order within a stage."""

from __future__ import annotations

import threading
from typing import List

import pytest

from rkserve.cpupool import FINISH, PREPARE, CpuPool


def test_finishing_goes_before_preparing_and_each_stage_in_order():
    pool = CpuPool(1)
    gate = threading.Event()
    ran: List[str] = []
    pool.submit(PREPARE, gate.wait, 10.0)  # the only worker is busy while the rest queue
    for n in range(3):
        pool.submit(PREPARE, ran.append, f"prepare {n}")
    for n in range(2):
        pool.submit(FINISH, ran.append, f"finish {n}")
    gate.set()
    pool.shutdown(wait=True)
    assert ran == ["finish 0", "finish 1", "prepare 0", "prepare 1", "prepare 2"]


def test_a_crashing_task_costs_no_worker_and_submit_after_shutdown_raises():
    pool = CpuPool(1)
    done = threading.Event()
    pool.submit(FINISH, lambda: 1 / 0)
    pool.submit(FINISH, done.set)
    assert done.wait(10.0)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(FINISH, done.set)
