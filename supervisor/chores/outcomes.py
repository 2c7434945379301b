"""What became of a row the janitor finished (a lost worker's, a retried one): counted and logged."""

from __future__ import annotations

import logging

from task_supervisor import events, sentry
from task_supervisor.chores.recovery import LostTask, Outcome
from task_supervisor.observe.stats import Stats

log = logging.getLogger("task_supervisor.chores.janitor")


def lost_handled(
    stats: Stats, scheduled: dict[str, tuple[str, int, str]], pool: str, lost: LostTask, outcome: Outcome
) -> None:
    """Count and log what became of a lost worker's row."""
    stats.lost_tasks[(pool, "requeued" if outcome.status == "READY" else "failed")] += 1
    if outcome.run_after is not None or outcome.last_attempt:
        retry_handled(stats, scheduled, pool, lost.exception_path, outcome)
    level = logging.WARNING if outcome.status == "READY" else logging.ERROR
    verb = "requeued" if outcome.status == "READY" else "marked FAILED"
    log.log(
        level,
        "Task %s %s (attempt %d, %s): %s",
        outcome.task_id,
        verb,
        outcome.attempts,
        lost.exception_path.rsplit(".", 1)[-1],
        lost.message,
        extra={
            "event": events.TASK_LOST_HANDLED,
            "task_id": outcome.task_id,
            "status": outcome.status,
            "pool": pool,
            "worker_id": lost.worker_id,
            "attempt": outcome.attempts,
        },
    )
    sentry.report(
        task_id=outcome.task_id,
        path=outcome.path,
        queue=outcome.queue,
        attempt=outcome.attempts,
        worker_id=lost.worker_id,
        exception_path=lost.exception_path,
        message=lost.message,
        extra_tags={"outcome": "requeued" if outcome.status == "READY" else "failed"},
    )


def retry_handled(
    stats: Stats, scheduled: dict[str, tuple[str, int, str]], pool: str, exception_path: str, outcome: Outcome
) -> None:
    """Count and log a retry scheduled or exhausted; ``scheduled`` is what status lists."""
    extra = {"task_id": outcome.task_id, "pool": pool, "attempt": outcome.attempts}
    if outcome.last_attempt:
        stats.retries[(pool, "exhausted")] += 1
        scheduled.pop(outcome.task_id, None)
        log.error(
            "Task %s (%s) failed with %s on its last attempt (%d); it stays FAILED",
            outcome.task_id,
            outcome.path,
            exception_path,
            outcome.attempts,
            extra={**extra, "event": events.RETRY_EXHAUSTED},
        )
    elif outcome.run_after is not None:
        stats.retries[(pool, "scheduled")] += 1
        when = outcome.run_after.isoformat()
        scheduled[outcome.task_id] = (outcome.path, outcome.attempts, when)
        log.warning(
            "Task %s (%s) failed with %s on attempt %d; retrying at %s",
            outcome.task_id,
            outcome.path,
            exception_path,
            outcome.attempts,
            when,
            extra={**extra, "event": events.RETRY_SCHEDULED},
        )
