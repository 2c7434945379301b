"""What children say on their report pipes, and what the loop does about it: task starts and
finishes (counted, failures handed to the janitor for retries), fenced writes, readiness, the
scheduler's reports; at EOF the pipe is closed, once."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from task_supervisor import events
from task_supervisor.chores.recovery import FailedTask
from task_supervisor.config import Config
from task_supervisor.loop.child import Child
from task_supervisor.wire import protocol
from task_supervisor.wire.spec import SCHEDULER

if TYPE_CHECKING:
    from task_supervisor.loop.arbiter import Supervisor

log = logging.getLogger("task_supervisor.loop.arbiter")


def read(sup: Supervisor, child: Child) -> None:
    """Read what a child said; at EOF stop watching its pipe."""
    while child.reader.fd >= 0:
        try:
            data = os.read(child.reader.fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EBADF:
                log.warning("Reading the pipe of pid=%s failed: %s", child.pid, exc)
            data = b""
        if not data:
            unwatch(sup, child)
            return
        now = sup.clock()
        for message in child.reader.feed(data):
            on_message(sup, child, message, now)


def timeout_for(config: Config, pool: str) -> Callable[[str], float | None]:
    default = config.pools[pool].timeout if pool in config.pools else None
    return lambda path: config.task_timeouts.get(path, default)


def on_message(sup: Supervisor, child: Child, message: dict, now: float) -> None:
    before = child.task
    child.handle_message(message, now, timeout_for(sup.config, child.spec.pool))
    event = message.get("event")
    if child.spec.role == SCHEDULER:
        sup.scheduling.on_message(message)
    elif event == protocol.TASK_STARTED:
        sup.stats.tasks_started[child.spec.pool] += 1
        log.debug(
            "Child pid=%s started task %s",
            child.pid,
            message.get("task_id"),
            extra={**child.log_extra, "event": events.TASK_STARTED, "task_id": message.get("task_id")},
        )
    elif event == protocol.TASK_FINISHED:
        on_task_finished(sup, child, message, before, now)
    elif event == protocol.EMPTY:
        sup.stats.empty_claims[child.spec.pool] += 1
    elif event == protocol.HELD:
        sup.stats.held_claims[child.spec.pool] += 1
        sup.flow.on_held(message, now, sup.wall())
    elif event == protocol.TASK_FENCED:
        sup.stats.fenced_writes[child.spec.pool] += 1
    elif event == protocol.READY:
        if pool_slot := sup.slot_of.get(child.pid):
            pool_slot[0].ever_up = True
        if sup.pickup.instant:  # a child starts at its pool's interval
            sup.pickup.tell(child)
        log.info("Child %s ready", child.spec.worker_id, extra={**child.log_extra, "event": events.CHILD_READY})


def on_task_finished(sup: Supervisor, child: Child, message: dict, before: Any, now: float) -> None:
    pool = child.spec.pool
    status_ = str(message.get("status", ""))
    sup.stats.tasks_finished[(pool, status_)] += 1
    if before is not None and before.path in sup.config.limits:
        sup.flow.on_finished(before.path, now)
    if status_ == "FAILED" and before is not None and sup.janitor is not None:
        exception = str(message.get("exception", ""))
        sup.janitor.task_failed(pool, FailedTask(child.spec.worker_id, before.task_id, before.path, exception))
    if child.recycle_after_task:
        log.info(
            "Child %s passed max_memory; recycling it after its task",
            child.spec.worker_id,
            extra={**child.log_extra, "event": events.CHILD_RECYCLE_MEMORY},
        )
        child.request_stop(now, sup.config.supervisor.graceful_timeout)


def unwatch(sup: Supervisor, child: Child) -> None:
    """Stop watching the child's pipe and close it, once: a descriptor number closed twice
    may by then belong to something else (a client's socket, another child's pipe)."""
    fd, child.reader.fd = child.reader.fd, -1
    if fd < 0:
        return
    try:
        sup.selector.unregister(fd)
    except (KeyError, ValueError):
        pass
    try:
        os.close(fd)
    except OSError:
        pass
