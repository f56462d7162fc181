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
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Tuple, cast

from ..spec import ModelSpec, check_files, common_fields, read_yaml
from .base import Prepared, Task

__all__ = ["TASKS", "Prepared", "Task", "get_task", "load_spec", "task_names"]

# task name (model.yaml's ``task``, the reply's ``task``) → its module in this package
TASKS: Dict[str, str] = {
    "classification": "classification",
    "segmentation": "segmentation",
    "tensor": "tensor",
    "detection": "detection",
}


def load_spec(folder: Path, need_model: bool = True) -> ModelSpec:
    """Read and validate ``folder/model.yaml``: the common fields, then the task's sections
    read by the task itself. ``need_model=False`` accepts a folder with neither model file yet
    (``rkserve convert`` builds them from ``convert.source``)."""
    top = read_yaml(folder)
    task = top.choice("task", task_names())
    spec = ModelSpec(task=task, **common_fields(top, folder), **get_task(task).read_spec(top))
    if need_model:
        check_files(top, spec)
    return spec


def task_names() -> Tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """The task module registered as ``name`` (imported on first use)."""
    return cast(Task, importlib.import_module(f"{__name__}.{TASKS[name]}"))


if TYPE_CHECKING:  # mypy checks that every task module has the Task functions
    from . import classification, detection, segmentation, tensor

    _checked: Tuple[Task, ...] = (classification, segmentation, tensor, detection)
