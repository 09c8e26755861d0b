"""Published tasks as clean/corrupted token batches with answers, named positions and a metric.

>>> sorted(TASKS)
['docstring', 'greater_than', 'induction', 'ioi', 'tracr-reverse', 'tracr-xproportion']
"""

import inspect
from typing import Any, Callable

from mechpatch.errors import choices, unknown_names
from mechpatch.tasks.base import TaskBatch, TaskData, TaskError, TaskScores
from mechpatch.tasks.docstring import make_docstring
from mechpatch.tasks.greater_than import make_greater_than
from mechpatch.tasks.induction import head_scores, make_induction
from mechpatch.tasks.ioi import make_ioi
from mechpatch.tasks.tracr import OutputMSE, make_tracr_reverse, make_tracr_xproportion

TASKS: dict[str, Callable[..., TaskData]] = {
    "docstring": make_docstring,
    "greater_than": make_greater_than,
    "induction": make_induction,
    "ioi": make_ioi,
    "tracr-reverse": make_tracr_reverse,
    "tracr-xproportion": make_tracr_xproportion,
}


def make_task(name: str, model: Any, **kwargs: Any) -> TaskData:
    """Build task ``name`` for ``model`` (keyword arguments go to the task's builder: n, seed, ...).

    Raises:
        TaskError: an unknown task, or a keyword its builder does not take (the message lists the valid ones).

    >>> make_task("induction", None, blok=3)
    Traceback (most recent call last):
    ...
    mechpatch.tasks.base.TaskError: task 'induction': unknown keyword argument 'blok' (did you mean 'block'?); valid: 'n', 'block', 'seed', 'vocab', 'bos'
    """
    if not isinstance(name, str) or name not in TASKS:
        raise TaskError(f"unknown task {name!r}; valid: {choices(TASKS)}")
    builder = TASKS[name]
    params = list(inspect.signature(builder).parameters.values())[1:]  # after the model
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = unknown_names(kwargs, valid)
        if unknown:
            raise TaskError(f"task {name!r}: {unknown}; valid: {choices(valid) if valid else 'none'}")
    return builder(model, **kwargs)


__all__ = [
    "TASKS", "OutputMSE", "TaskBatch", "TaskData", "TaskError", "TaskScores", "head_scores", "make_docstring",
    "make_greater_than", "make_induction", "make_ioi", "make_task", "make_tracr_reverse", "make_tracr_xproportion",
]
