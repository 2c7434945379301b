"""The benchmark's tasks: one that does nothing, one that takes 10 ms."""

from __future__ import annotations

import time

from django.tasks import task

WORK_SECONDS = 0.010


@task()
def noop() -> None:
    return None


@task()
def work_10ms() -> None:
    """Sleep 10 ms: stands for a task that waits on I/O (an HTTP call, an e-mail)."""
    time.sleep(WORK_SECONDS)
