"""What the supervisor tells a child over its control pipe, one line each:

- ``wake``: a task became READY for your queues; stop waiting and poll now.
- ``timeout <task id> <seconds>`` (with SIGUSR1): raise TaskTimeout in that task.

The child's end (``task_supervisor.worker.control``) replaces db_worker's ``time.sleep`` between
polls with a wait on this pipe, so an idle child picks up a task the moment the supervisor hears
of it, and polling stays the fallback.
"""

from __future__ import annotations

import os
import signal

TIMEOUT_SIGNAL = signal.SIGUSR1
WAKE = b"wake\n"


def send_wake(fd: int) -> bool:
    """Supervisor side; False if the pipe is full or gone (the child will poll anyway)."""
    try:
        os.write(fd, WAKE)
    except OSError:
        return False
    return True


def send_timeout(fd: int, task_id: str, seconds: float) -> bool:
    try:
        os.write(fd, f"timeout {task_id} {seconds:g}\n".encode())
    except OSError:
        return False
    return True
