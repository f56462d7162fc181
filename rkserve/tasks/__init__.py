"""Tasks: what a model is for, as one module each, looked up by name.

Each task module (``classification.py``, ``segmentation.py``...) defines the functions of
:class:`~rkserve.tasks.base.Task`: its model.yaml sections, a load-time check of the model
against what it reads, params, ``prepare`` and ``finish``. A new task is one module here plus
one line in :data:`TASKS`. The other modules (``image``, ``classify``, ``segment``,
``labels``) are the pure numpy/cv2 functions the tasks are made of, shared with the CLI,
the converter and the tests::

    task = get_task("classification")
    prepared = task.prepare(jpeg, spec, backend, params, max_pixels)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, Tuple, cast

from .base import Prepared, Task

__all__ = ["TASKS", "Prepared", "Task", "get_task", "task_names"]

# task name (model.yaml's ``task``, the reply's ``task``) → its module in this package
TASKS: Dict[str, str] = {
    "classification": "classification",
    "segmentation": "segmentation",
    "tensor": "tensor",
    "detection": "detection",
}


def task_names() -> Tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """The task module registered as ``name`` (imported on first use)."""
    return cast(Task, importlib.import_module(f"{__name__}.{TASKS[name]}"))


if TYPE_CHECKING:  # mypy checks that every task module has the Task functions
    from . import classification, detection, segmentation, tensor

    _checked: Tuple[Task, ...] = (classification, segmentation, tensor, detection)
