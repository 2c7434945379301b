"""Exceptions recorded on task rows by the supervisor.

They live in a module with no Django imports so that a task row's ``exception_class_path``
(``task_supervisor.exceptions.TaskTimeout``) always imports, in any process.
"""

from __future__ import annotations


class TaskTimeout(Exception):
    """A task ran past its time limit."""


class WorkerLost(Exception):
    """The worker process running a task died before the task finished."""
