"""The limits the loop enforces on its children, each with the moment it next needs attention:

- a task's timeout: TaskTimeout raised inside it (soft), then its child SIGKILLed after the
  pool's kill_after (hard);
- the grace period of a child asked to stop, and the forced stop's deadline;
- a pool's max_memory: an idle child over it is stopped, a busy one after its task.

Time is a parameter (monotonic seconds); the loop calls ``enforce(now, ...)`` every turn and
sleeps no longer than ``next_due``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from task_supervisor import events
from task_supervisor.config import Config
from task_supervisor.loop.child import Child, ChildState
from task_supervisor.loop.proc import ProcessCalls
from task_supervisor.observe.stats import Stats

log = logging.getLogger("task_supervisor.loop.arbiter")

MEMORY_CHECK_INTERVAL = 1.0  # seconds between RSS checks of children of pools with max_memory
DEFAULT_KILL_AFTER = 10.0  # seconds, for a child whose pool left the config


def timeout_moment(child: Child, config: Config) -> float | None:
    """When the child's current task next needs attention: soft timeout, then hard kill."""
    task = child.task
    if task is None or task.timeout is None or child.killed:
        return None
    if child.timed_out is not task:
        return task.since + task.timeout
    pool = config.pools.get(child.spec.pool)
    return task.since + task.timeout + (pool.kill_after if pool else DEFAULT_KILL_AFTER)


class Limits:
    def __init__(self, stats: Stats, calls: ProcessCalls) -> None:
        self.stats = stats
        self.calls = calls
        self.next_memory_check = 0.0

    def next_due(self, children: Iterable[Child], config: Config) -> float | None:
        moments = []
        for child in children:
            if child.kill_at is not None and not child.killed:
                moments.append(child.kill_at)
            if (moment := timeout_moment(child, config)) is not None:
                moments.append(moment)
        if any(pool.max_memory is not None for pool in config.pools.values()):
            moments.append(self.next_memory_check)
        return min(moments) if moments else None

    def enforce(self, now: float, children: list[Child], config: Config) -> None:
        for child in children:
            self.enforce_timeout(now, child, config)
            if child.kill_at is not None and now >= child.kill_at and not child.killed:
                log.warning(
                    "Child %s did not stop within its grace period; killing it",
                    child.spec.worker_id,
                    extra={**child.log_extra, "event": events.CHILD_KILLED},
                )
                child.kill("it did not stop within its grace period")
        if now >= self.next_memory_check:
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL
            for child in children:
                self.check_memory(now, child, config)

    def enforce_timeout(self, now: float, child: Child, config: Config) -> None:
        moment = timeout_moment(child, config)
        if moment is None or now < moment:
            return
        task = child.task
        assert task is not None
        extra = {**child.log_extra, "task_id": task.task_id}
        if child.timed_out is not task:
            log.warning(
                "Task %s (%s) ran past its timeout of %gs; raising TaskTimeout in it",
                task.task_id,
                task.path,
                task.timeout,
                extra={**extra, "event": events.TASK_TIMEOUT},
            )
            child.tell_timeout()
            self.stats.timeouts[(child.spec.pool, "soft")] += 1
        else:
            log.error(
                "Task %s (%s) did not stop after TaskTimeout; killing child pid=%s",
                task.task_id,
                task.path,
                child.pid,
                extra={**extra, "event": events.TASK_TIMEOUT_KILL},
            )
            child.killed_for_timeout = task
            child.kill(f"task {task.task_id} ran past its timeout and did not stop")
            self.stats.timeouts[(child.spec.pool, "hard")] += 1

    def check_memory(self, now: float, child: Child, config: Config) -> None:
        """Recycle a child past its pool's max_memory: idle now, busy after its task."""
        pool = config.pools.get(child.spec.pool)
        if pool is None or pool.max_memory is None or not child.up or child.recycle_after_task:
            return
        rss, _ = self.calls.usage(child.pid)
        if rss is None or rss <= pool.max_memory:
            return
        log.warning(
            "Child %s uses %d MiB, over max_memory %d MiB",
            child.spec.worker_id,
            rss >> 20,
            pool.max_memory >> 20,
            extra={**child.log_extra, "event": events.CHILD_OVER_MEMORY},
        )
        if child.state is ChildState.BUSY:
            child.recycle_after_task = True
        else:
            child.request_stop(now, config.supervisor.graceful_timeout)
