"""Retention: finished task rows and old run-log rows deleted after [retention]'s durations.

One supervisor at a time prunes: the one holding the ``retention`` lease row (renewed by the
database's clock, so no node's clock decides). It deletes one bounded batch per janitor turn,
BATCH_PAUSE apart, so the loop never blocks on it for long, and it only ever deletes SUCCESSFUL
and FAILED rows (a READY or RUNNING row is never touched: the status is in the DELETE's own
WHERE clause). The choice of rows is the one of django-tasks-db's ``prune_db_task_results``
(``finished()`` rows by ``finished_at``, SUCCESSFUL and FAILED ages apart), in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from task_supervisor import events
from task_supervisor.chores import recovery
from task_supervisor.compat import TaskBackend
from task_supervisor.config import RetentionConfig
from task_supervisor.observe.stats import Stats

log = logging.getLogger(__name__)

BATCH = 1000  # rows per DELETE statement
BATCH_PAUSE = 0.1  # seconds between batches while there is more to prune
PRUNE_INTERVAL = 60.0  # seconds between pruning runs once nothing is left
LEASE_NAME = "retention"
LEASE_SECONDS = 120.0  # the lease outlives a pause in pruning; renewed by every batch
KINDS = ("successful", "failed", "schedule_runs")


def candidates(backend: TaskBackend, retention: RetentionConfig, kind: str) -> Any:
    """The rows of ``kind`` that retention says may go (a queryset, not yet evaluated)."""
    from django.db.models.functions import Now

    age = getattr(retention, kind)
    if age is None:
        return None
    cutoff = Now() - timedelta(seconds=age)
    if kind == "schedule_runs":
        from task_supervisor.models import ScheduleRun

        return ScheduleRun.objects.using(backend.db_alias).filter(enqueued_at__lt=cutoff)
    status = "SUCCESSFUL" if kind == "successful" else "FAILED"
    return backend.model.objects.using(backend.db_alias).filter(
        backend_name=backend.alias, status=status, finished_at__lt=cutoff
    )


def count(backend: TaskBackend, retention: RetentionConfig) -> dict[str, int]:
    """What would go now, by kind (``prune --dry-run``)."""
    return {kind: (rows.count() if (rows := candidates(backend, retention, kind)) is not None else 0) for kind in KINDS}


def prune_batch(backend: TaskBackend, retention: RetentionConfig, kind: str, limit: int = BATCH) -> int:
    """Delete at most ``limit`` rows of ``kind``; returns how many went."""
    rows = candidates(backend, retention, kind)
    if rows is None:
        return 0
    ids = list(rows.order_by().values_list("pk", flat=True)[:limit])
    if not ids:
        return 0
    # The status (or age) filter again in the DELETE itself: a row retried since is left alone.
    deleted, _ = rows.filter(pk__in=ids).delete()
    return deleted


def take_lease(backend: TaskBackend, holder: str, seconds: float = LEASE_SECONDS, name: str = LEASE_NAME) -> bool:
    """Hold the named lease for ``seconds`` if it is free, expired, or ours already."""
    from django.db import IntegrityError, transaction
    from django.db.models import Q
    from django.db.models.functions import Now

    from task_supervisor.models import Lease

    until = Now() + timedelta(seconds=seconds)
    rows = Lease.objects.using(backend.db_alias).filter(name=name)
    if rows.filter(Q(holder=holder) | Q(until__lt=Now())).update(holder=holder, until=until):
        return True
    if rows.exists():
        return False
    try:
        with transaction.atomic(using=backend.db_alias):
            Lease.objects.using(backend.db_alias).create(name=name, holder=holder, until=until)
    except IntegrityError:
        return False  # another node created it first
    return True


def release_lease(backend: TaskBackend, holder: str, name: str = LEASE_NAME) -> None:
    from task_supervisor.models import Lease

    Lease.objects.using(backend.db_alias).filter(name=name, holder=holder).delete()


class Retention:
    """The pruning chore; ``tick`` does at most one batch, called from the janitor's turn."""

    def __init__(self, holder: str, clock: Callable[[], float], stats: Stats) -> None:
        self.holder = holder
        self.clock = clock
        self.stats = stats
        self.next_run = 0.0
        self.held = False

    def next_due(self) -> float:
        return self.next_run

    def tick(self, now: float, backends: list[TaskBackend], retention: RetentionConfig) -> None:
        if not retention.enabled or now < self.next_run:
            return
        self.next_run = now + PRUNE_INTERVAL  # unless a batch below finds more to do
        for backend in backends:
            recovery.set_sqlite_busy_timeout(backend)
            if not take_lease(backend, self.holder):
                self.held = False
                return
            self.held = True
            for kind in KINDS:
                deleted = prune_batch(backend, retention, kind)
                if deleted:
                    self.stats.pruned[kind] += deleted
                    log.info(
                        "Pruned %d %s rows past their retention",
                        deleted,
                        kind.replace("_", " "),
                        extra={"event": events.ROWS_PRUNED, "kind": kind, "rows": deleted},
                    )
                if deleted >= BATCH:
                    self.next_run = now + BATCH_PAUSE
                    return
