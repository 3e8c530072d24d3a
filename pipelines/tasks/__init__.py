"""The model families, one :class:`~medflow.tasks.base.Task` each: ``TASKS[plan.family]``.

A new family is a new module here and one line below.
"""

from __future__ import annotations

from medflow.tasks.base import Task
from medflow.tasks.classification import Classification
from medflow.tasks.reconstruction import Reconstruction
from medflow.tasks.segmentation import Segmentation

TASKS: dict[str, Task] = {t.family: t for t in (Segmentation(), Classification(), Reconstruction())}


def task_for(family: str, source: str = "model") -> Task:
    """The task of ``family``; a one-line ValueError naming ``source`` for an unknown one."""
    try:
        return TASKS[family]
    except KeyError:
        raise ValueError(f"{source}: unknown model family {family!r}; known: {', '.join(TASKS)}") from None
