"""What to record for the row a dead child may have left RUNNING. Pure: no I/O, no clock.

The janitor then finishes the row (FAILED or back to READY) by a conditional update: only a row
still RUNNING under the child's worker id is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from task_supervisor.chores.recovery import TASK_TIMEOUT, LostTask
from task_supervisor.config import PoolConfig
from task_supervisor.exceptions import TaskCancelled
from task_supervisor.loop.child import Child, RunningTask
from task_supervisor.loop.phase import Phase


@dataclass(frozen=True, slots=True)
class DeadChild:
    """What the loop knew of a child when it was reaped."""

    worker_id: str
    pid: int
    how: str  # describe_status(): "killed by SIGKILL (...)", "exited with code 1"
    task: RunningTask | None  # the task it had reported started and not finished
    killed_for_timeout: RunningTask | None  # the task whose hard timeout made us kill it
    killed: bool  # the supervisor SIGKILLed it (timeout, grace period, forced stop)
    killed_for_cancel: RunningTask | None = None  # the cancelled task that did not stop in time

    @classmethod
    def of(cls, child: Child, how: str, killed_for_cancel: RunningTask | None = None) -> DeadChild:
        return cls(
            child.spec.worker_id,
            child.pid,
            how,
            child.task,
            child.killed_for_timeout,
            child.killed,
            killed_for_cancel=killed_for_cancel,
        )


TASK_CANCELLED = f"task_supervisor.{TaskCancelled.__name__}"


def lost_task(child: DeadChild, pool: PoolConfig, phase: Phase, graceful_timeout: float) -> LostTask:
    """The record for the janitor: which row, which error class, which message, which policy."""
    wid = child.worker_id
    if child.killed_for_cancel is not None:
        cancelled = child.killed_for_cancel
        message = (
            f"Task {cancelled.path} was cancelled and did not stop within kill_after {pool.kill_after:g}s, "
            f"so its worker ({wid}, pid {child.pid}) was killed."
        )
        return LostTask(wid, cancelled.task_id, message, exception_path=TASK_CANCELLED)
    if child.task is None and child.killed_for_timeout is None:
        # No task started in it: a RUNNING row of its worker id was claimed and never run, so it
        # goes back to READY whatever on_worker_lost says (nothing of it ran, nothing runs twice).
        message = f"The worker that claimed this task ({wid}, pid {child.pid}) {child.how} before starting it."
        return LostTask(wid, None, message, on_worker_lost="requeue", max_attempts=pool.max_attempts)
    if child.killed_for_timeout is not None:
        killed = child.killed_for_timeout
        message = (
            f"Task {killed.path} ran past its timeout of {killed.timeout:g}s and did not stop "
            f"within kill_after {pool.kill_after:g}s, so its worker ({wid}, pid {child.pid}) was killed."
        )
        return LostTask(wid, killed.task_id, message, exception_path=TASK_TIMEOUT)
    message = f"The worker running this task ({wid}, pid {child.pid}) {child.how}."
    if child.killed and phase is Phase.DRAINING:
        message += (
            f" It was killed at the end of graceful_timeout ({graceful_timeout:g}s) while the supervisor drained."
        )
    elif child.killed and phase is Phase.STOPPING:
        message += " It was killed when the supervisor was told to stop at once."
    elif "SIGKILL" in child.how and not child.killed:
        message += " If it ran out of memory, raise the memory limit or set the pool's max_memory."
    return LostTask(wid, None, message, on_worker_lost=pool.on_worker_lost, max_attempts=pool.max_attempts)
