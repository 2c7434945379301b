"""Exceptions recorded on task rows by the supervisor.

They live in a module with no Django imports, and claim ``task_supervisor`` as their module, so
that a row's ``exception_class_path`` reads ``task_supervisor.TaskTimeout`` and imports anywhere.
"""

from __future__ import annotations


class TaskTimeout(Exception):
    """A task ran past its time limit."""


class WorkerLost(Exception):
    """The worker process running a task died before the task finished."""


class LeaseExpired(Exception):
    """The node could not renew its lease on its running tasks (database unreachable, or the
    supervisor frozen), so the task was stopped before another node may recover it."""


class TaskCancelled(Exception):
    """An operator cancelled the task (``task-supervisor cancel``, the admin or ``ops.cancel``);
    it is never retried."""


for _cls in (TaskTimeout, WorkerLost, LeaseExpired, TaskCancelled):
    _cls.__module__ = "task_supervisor"


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (database drivers' messages span several), or its class name."""
    return " ".join(str(exc).split()) or type(exc).__name__
