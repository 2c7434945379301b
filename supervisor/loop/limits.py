"""The limits the loop enforces on its children, each with the moment it next needs attention:

- a task's timeout: TaskTimeout raised inside it (soft), then its child SIGKILLed after the
  pool's kill_after (hard);
- a cancelled task (an operator's cancel request, found by the janitor): TaskCancelled raised
  inside it, then its child SIGKILLed after the pool's kill_after if it still runs it;
- the grace period of a child asked to stop, and the forced stop's deadline;
- a pool's max_memory: an idle child over it is stopped, a busy one after its task.

Time is a parameter (monotonic seconds); the loop calls ``enforce(now, ...)`` every turn and
sleeps no longer than ``next_due``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from task_supervisor import events
from task_supervisor.config import Config
from task_supervisor.loop.child import Child, ChildState, RunningTask
from task_supervisor.loop.proc import ProcessCalls
from task_supervisor.observe.stats import Stats
from task_supervisor.wire import control

log = logging.getLogger("task_supervisor.loop.arbiter")

MEMORY_CHECK_INTERVAL = 1.0  # seconds between RSS checks of children of pools with max_memory
DEFAULT_KILL_AFTER = 10.0  # seconds, for a child whose pool left the config
CANCEL_PATIENCE = 5.0  # seconds a cancel waits for its child to report the task started


def timeout_moment(child: Child, config: Config) -> float | None:
    """When the child's current task next needs attention: soft timeout, then hard kill."""
    task = child.task
    if task is None or task.timeout is None or child.killed:
        return None
    if child.timed_out is not task:
        return task.since + task.timeout
    pool = config.pools.get(child.spec.pool)
    return task.since + task.timeout + (pool.kill_after if pool else DEFAULT_KILL_AFTER)


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A running task told to raise TaskCancelled, and when its child is killed if it has not."""

    task: RunningTask
    kill_at: float  # monotonic seconds


class Limits:
    def __init__(self, stats: Stats, calls: ProcessCalls) -> None:
        self.stats = stats
        self.calls = calls
        self.next_memory_check = 0.0
        self.cancelled: dict[int, Cancelled] = {}  # pid -> its cancelled task
        # (task id, worker id) -> until when to try: the child may not have reported its task yet
        self.cancel_requests: dict[tuple[str, str], float] = {}
        self.cancel_killed: dict[int, RunningTask] = {}  # pid -> the cancelled task it was killed for

    def cancel(self, now: float, children: Iterable[Child], requests: list[tuple[str, str]], config: Config) -> None:
        """Tell each child running a cancelled task to raise TaskCancelled. A child that has not
        reported the task started yet is asked again on later turns, for CANCEL_PATIENCE."""
        for request in requests:
            self.cancel_requests.setdefault(request, now + CANCEL_PATIENCE)
        if not self.cancel_requests:
            return
        by_worker = {child.spec.worker_id: child for child in children}
        for (task_id, worker_id), until in list(self.cancel_requests.items()):
            child = by_worker.get(worker_id)
            task = child.task if child is not None else None
            if child is None or now >= until:
                del self.cancel_requests[(task_id, worker_id)]
                continue
            if task is None or _key(task.task_id) != _key(task_id):
                continue
            del self.cancel_requests[(task_id, worker_id)]
            if child.pid in self.cancelled or child.killed:
                continue
            pool = config.pools.get(child.spec.pool)
            self.cancelled[child.pid] = Cancelled(task, now + (pool.kill_after if pool else DEFAULT_KILL_AFTER))
            log.warning(
                "Task %s (%s) was cancelled; raising TaskCancelled in it",
                task.task_id,
                task.path,
                extra={**child.log_extra, "task_id": task.task_id, "event": events.TASK_CANCEL_SENT},
            )
            if control.send_cancel(child.control_fd, task.task_id):
                child.signal(control.TIMEOUT_SIGNAL)
            self.stats.cancels[child.spec.pool] += 1

    def enforce_cancel(self, now: float, child: Child) -> None:
        """Kill the child of a cancelled task still running it kill_after later."""
        cancelled = self.cancelled.get(child.pid)
        if cancelled is None:
            return
        if child.task is not cancelled.task:
            del self.cancelled[child.pid]  # it stopped (or the child is gone)
        elif now >= cancelled.kill_at and not child.killed:
            log.error(
                "Cancelled task %s (%s) did not stop; killing child pid=%s",
                cancelled.task.task_id,
                cancelled.task.path,
                child.pid,
                extra={**child.log_extra, "task_id": cancelled.task.task_id, "event": events.TASK_CANCEL_KILL},
            )
            self.cancel_killed[child.pid] = cancelled.task
            child.kill(f"task {cancelled.task.task_id} was cancelled and did not stop")

    def next_due(self, children: Iterable[Child], config: Config) -> float | None:
        moments = [c.kill_at for c in self.cancelled.values()]
        for child in children:
            if child.kill_at is not None and not child.killed:
                moments.append(child.kill_at)
            if (moment := timeout_moment(child, config)) is not None:
                moments.append(moment)
        if any(pool.max_memory is not None for pool in config.pools.values()):
            moments.append(self.next_memory_check)
        return min(moments) if moments else None

    def enforce(self, now: float, children: list[Child], config: Config) -> None:
        self.cancel(now, children, [], config)
        for child in children:
            self.enforce_timeout(now, child, config)
            self.enforce_cancel(now, child)
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


def _key(task_id: str) -> str:
    """A task id as one spelling (UUIDs with or without dashes)."""
    return task_id.replace("-", "").lower()
