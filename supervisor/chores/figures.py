"""Per-minute figures for the dashboard's charts: tasks finished by outcome, queue depth, pickup
latency, one ``MinuteFigures`` row per (minute, queue), cluster-wide.

One node records them: the one holding the ``figures`` lease row (renewed by the database's
clock, as retention's), so figures are never counted twice; the unique (minute, queue) key makes
a minute written by two holders in a hand-over count once. Each minute is read SETTLE_S after it
ends, from the task table through its (status, finished_at) index (migration 0005): finished
rows by ``finished_at``, pickup latency (enqueue, or a later ``run_after``, to start) of the rows
started in the minute, and READY / RUNNING counts at the time of writing. The same chore prunes
figures and stopped nodes' snapshots older than ``[retention] figures``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from task_supervisor.chores import recovery
from task_supervisor.chores.retention import take_lease
from task_supervisor.compat import TaskBackend
from task_supervisor.config import RetentionConfig

log = logging.getLogger(__name__)

LEASE_NAME = "figures"
LEASE_SECONDS = 150.0  # outlives a minute between two writes by the holder
SETTLE_S = 5  # seconds after a minute ends before it is read: late commits land first
CATCH_UP_MINUTES = 5  # minutes written at most in one go after a gap (a new holder, an outage)
LATENCY_SAMPLE = 5000  # rows started in a minute whose latency is read, at most
FINISHED = ("SUCCESSFUL", "FAILED")


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def due_minutes(now: datetime, last_written: datetime | None) -> list[datetime]:
    """The complete minutes (settled for SETTLE_S) not written yet, oldest first, at most CATCH_UP."""
    newest = minute_of(now - timedelta(seconds=60 + SETTLE_S))
    first = newest - timedelta(minutes=CATCH_UP_MINUTES - 1)
    if last_written is not None:
        first = max(first, last_written + timedelta(minutes=1))
    count = int((newest - first).total_seconds() // 60) + 1
    return [first + timedelta(minutes=i) for i in range(max(0, count))]


def _add(rows: dict[str, dict[str, int]], queue: str, **counts: int) -> None:
    row = rows.setdefault(queue, {})
    for name, value in counts.items():
        row[name] = row.get(name, 0) + value


def measure(backend: TaskBackend, start: datetime, rows: dict[str, dict[str, int]]) -> None:
    """Add the minute from ``start`` of ``backend``'s tasks to ``rows``: queue -> counts."""
    from django.db.models import Count, Q

    end = start + timedelta(minutes=1)
    tasks = backend.model.objects.using(backend.db_alias).order_by()
    finished = (
        tasks.filter(status__in=FINISHED, finished_at__gte=start, finished_at__lt=end)
        .values("queue_name", "status")
        .annotate(n=Count("id"))
    )
    for r in finished:
        _add(rows, r["queue_name"], **{"succeeded" if r["status"] == "SUCCESSFUL" else "failed": r["n"]})
    started = tasks.filter(
        Q(status="RUNNING") | Q(status__in=FINISHED, finished_at__gte=start), started_at__gte=start, started_at__lt=end
    ).values_list("queue_name", "enqueued_at", "run_after", "started_at")[:LATENCY_SAMPLE]
    for queue, enqueued_at, run_after, started_at in started:
        due = max(enqueued_at, run_after) if run_after is not None and run_after.year < 9999 else enqueued_at
        ms = max(0, int((started_at - due).total_seconds() * 1000))
        _add(rows, queue, started=1, latency_ms_total=ms)
        rows[queue]["latency_ms_max"] = max(rows[queue].get("latency_ms_max", 0), ms)


def current_counts(backend: TaskBackend, rows: dict[str, dict[str, int]]) -> None:
    """READY (that may run now) and RUNNING tasks per queue, added to ``rows``."""
    for queue, count, _ in recovery.ready_by_queue(backend):
        _add(rows, queue, ready=count)
    from task_supervisor.dashboard import running_by_queue

    for queue, count in running_by_queue(backend.model.objects.using(backend.db_alias).order_by()).items():
        _add(rows, queue, running=count)


class Figures:
    """The figures chore; ``tick`` writes the minutes due, called from the janitor's turn."""

    def __init__(self, holder: str, clock: Callable[[], float]) -> None:
        self.holder = holder
        self.clock = clock
        self.next_run = 0.0
        self.last_written: datetime | None = None
        self.held = False

    def next_due(self) -> float:
        return self.next_run

    def tick(self, now: float, backends: list[TaskBackend], retention: RetentionConfig) -> None:
        from django.utils import timezone

        if now < self.next_run or not backends:
            return
        wall = timezone.now()
        minutes = due_minutes(wall, self.last_written)
        # Next: just after the following minute settles (a minute at most, so a lost lease is retaken).
        following = minute_of(wall) + timedelta(seconds=60 + SETTLE_S) - wall
        self.next_run = now + max(1.0, following.total_seconds())
        if not minutes:
            return
        main = backends[0]
        recovery.set_sqlite_busy_timeout(main)
        self.held = take_lease(main, self.holder, LEASE_SECONDS, LEASE_NAME)
        if not self.held:
            return
        self._write(main, backends, minutes)
        self._prune(main, retention)

    def _write(self, main: TaskBackend, backends: list[TaskBackend], minutes: list[datetime]) -> None:
        from task_supervisor.models import MinuteFigures

        now_counts: dict[str, dict[str, int]] = {}
        for backend in backends:
            current_counts(backend, now_counts)
        with recovery.bounded(main):
            last = MinuteFigures.objects.using(main.db_alias).order_by("-minute").values_list("minute", flat=True)
            newest = last.first()
            minutes = [m for m in minutes if newest is None or m > newest]
            rows: list[Any] = []
            for start in minutes:
                per_queue: dict[str, dict[str, int]] = {}
                for backend in backends:
                    measure(backend, start, per_queue)
                if start == minutes[-1]:  # depth is read now: it belongs to the newest minute only
                    for queue, counts in now_counts.items():
                        _add(per_queue, queue, **counts)
                rows += [
                    MinuteFigures(minute=start, queue=queue, node=self.holder, **counts)
                    for queue, counts in sorted(per_queue.items())
                ]
            MinuteFigures.objects.using(main.db_alias).bulk_create(rows, ignore_conflicts=True)
        if minutes:
            self.last_written = minutes[-1]
        elif newest is not None:
            self.last_written = newest

    def _prune(self, main: TaskBackend, retention: RetentionConfig) -> None:
        from django.db.models.functions import Now

        from task_supervisor.models import MinuteFigures, NodeSnapshot

        cutoff = Now() - timedelta(seconds=retention.figures)
        MinuteFigures.objects.using(main.db_alias).filter(minute__lt=cutoff).delete()
        NodeSnapshot.objects.using(main.db_alias).filter(last_seen__lt=cutoff).delete()
