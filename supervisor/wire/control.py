"""What the supervisor tells a child over its control pipe, one line each:

- ``wake``: a task became READY for your queues; stop waiting and poll now.
- ``timeout <task id> <seconds>`` (with SIGUSR1): raise TaskTimeout in that task.
- ``lease <monotonic seconds>``: the node's lease on its RUNNING rows holds until then (after
  each heartbeat); a child runs and claims tasks only while it holds (see LEASE_MARGIN).
- ``lease-lost`` (with SIGUSR1): the supervisor could not renew the lease: raise LeaseExpired
  in the running task now.
- ``cancel <task id>`` (with SIGUSR1): an operator cancelled that task: raise TaskCancelled in it.
- ``poll <seconds>``: wait that long between idle polls (the supervisor wakes you for each new
  task: the poll is only a safety net); ``poll -``: back to db_worker's own interval.
- ``ping <n>``: answer ``pong`` with the same n on the report pipe (an idle child's liveness).

The child's end (``task_supervisor.worker.control``) replaces db_worker's ``time.sleep`` between
polls with a wait on this pipe, so an idle child picks up a task the moment the supervisor hears
of it, and polling stays the fallback.
"""

from __future__ import annotations

import os
import signal

TIMEOUT_SIGNAL = signal.SIGUSR1  # read the pipe now: a timeout or a lost lease
WAKE = b"wake\n"
LEASE_LOST = b"lease-lost\n"

# The lease arithmetic (docs in the README, "Never twice at once"). Another node may recover this
# node's RUNNING rows once its heartbeat is node_timeout old by the database's clock; the lease is
# valid until node_timeout after the last heartbeat that succeeded was sent (so it ends no later).
# LEASE_MARGIN before that, running tasks get LeaseExpired and no child claims; LEASE_GRACE later
# a task that has not stopped is killed, which leaves LEASE_MARGIN - LEASE_GRACE seconds to cover
# a loop held by a hung database call (CHORES_TIMEBOX, 2.5 s) and reaping.
LEASE_MARGIN = 5.0  # seconds
LEASE_GRACE = 1.5  # seconds


def send_wake(fd: int) -> bool:
    """Supervisor side; False if the pipe is full or gone (the child will poll anyway)."""
    return _send(fd, WAKE)


def send_timeout(fd: int, task_id: str, seconds: float) -> bool:
    return _send(fd, f"timeout {task_id} {seconds:g}\n".encode())


def send_cancel(fd: int, task_id: str) -> bool:
    return _send(fd, f"cancel {task_id}\n".encode())


def send_lease(fd: int, until: float) -> bool:
    return _send(fd, f"lease {until!r}\n".encode())


def send_lease_lost(fd: int) -> bool:
    return _send(fd, LEASE_LOST)


def send_poll(fd: int, seconds: float | None) -> bool:
    return _send(fd, b"poll -\n" if seconds is None else f"poll {seconds:.3f}\n".encode())


def send_ping(fd: int, seq: int) -> bool:
    return _send(fd, f"ping {seq}\n".encode())


def _send(fd: int, line: bytes) -> bool:
    try:
        os.write(fd, line)
    except OSError:
        return False
    return True
