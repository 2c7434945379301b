"""The Celery side of the benchmark: a minimal app with the same two tasks, noop and work_10ms.

    celery -A celeryapp worker --pool prefork --concurrency N      (bench/run.py starts it)

Settings of a typical production setup for fire-and-forget tasks: a Redis broker, no result
backend (``task_ignore_result``), Celery's defaults otherwise (prefetch multiplier 4, a task
acknowledged when a child receives it). A plain Celery app: no Django, so no Django fixup.

The queue and the control and event exchanges carry the run's name, so that its workers never
meet (mingle, gossip) anybody else's on the same Redis, and whatever the run leaves there can be
found by that name and deleted.

Each task, once run, appends one line to a file of its own process in BENCH_CELERY_STAMPS: its
id, the epoch seconds at task_prerun (start) and at task_postrun (finish), and its state. The
driver reads these as it reads a task row's started_at and finished_at.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, signals

BROKER_ENV = "BENCH_REDIS_URL"
NAME_ENV = "BENCH_CELERY_NAME"  # the run's name: queue, exchanges, node names
STAMPS_ENV = "BENCH_CELERY_STAMPS"  # a folder; unset: no stamps
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
WORK_SECONDS = 0.010

app = Celery("celeryapp", fixups=[])  # fixups=[]: no Django, even when DJANGO_SETTINGS_MODULE is set


def configure(broker: str, name: str) -> None:
    app.conf.update(
        broker_url=broker,
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=name,
        control_exchange=name,
        event_exchange=f"{name}.ev",
        event_queue_prefix=f"{name}.ev",
    )


configure(os.environ.get(BROKER_ENV, DEFAULT_BROKER), os.environ.get(NAME_ENV, "ts_bench"))


@app.task
def noop() -> None:
    return None


@app.task
def work_10ms() -> None:
    """Sleep 10 ms: stands for a task that waits on I/O (an HTTP call, an e-mail)."""
    time.sleep(WORK_SECONDS)


TASKS = {"noop": noop, "10ms": work_10ms}

_started: dict[str, float] = {}  # task id -> epoch seconds at task_prerun
_stamps: tuple[int, int] | None = None  # (pid, fd): opened in the child that runs the tasks


@signals.task_prerun.connect
def _on_prerun(task_id: str, **kwargs: Any) -> None:
    _started[task_id] = time.time()


@signals.task_postrun.connect
def _on_postrun(task_id: str, state: str | None = None, **kwargs: Any) -> None:
    finished = time.time()
    fd = _stamps_fd()
    if fd is not None:
        os.write(fd, f"{task_id} {_started.pop(task_id, finished):.6f} {finished:.6f} {state}\n".encode())


def _stamps_fd() -> int | None:
    """One append-only file per process; a single write per line keeps lines whole."""
    global _stamps
    folder = os.environ.get(STAMPS_ENV)
    if not folder:
        return None
    if _stamps is None or _stamps[0] != os.getpid():
        path = os.path.join(folder, f"{os.getpid()}.stamps")
        _stamps = (os.getpid(), os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    return _stamps[1]
