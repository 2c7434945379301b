"""Tiny tasks the real-process tests run: they sleep, crash, exit and record where they ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django_tasks_db.compat import Task  # noqa: F401  (the live framework's Task)

try:
    from django.tasks import task
except ImportError:  # Django < 6
    from django_tasks import task


@task()
def noop() -> None:
    return None


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="reports")
def report(n: int) -> str:
    return f"report {n}"


@task()
def sleep(seconds: float, marker: str = "") -> float:
    """Sleep; with a marker path, touch it first so a test knows the task has started."""
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return seconds


@task()
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@task()
def exit_process(code: int = 3) -> None:
    os._exit(code)


@task()
def pid() -> int:
    return os.getpid()


@task()
def argv0() -> str:
    """The child's sys.argv[0]: worker.py in an exec'd child, the supervisor's in a forked one."""
    import sys

    return sys.argv[0]
