"""Rows db_worker cannot even start: failed with the reason instead of crashing every child.

db_worker claims the next READY row and then reads it. A row whose ``worker_ids`` is not a list
makes the claim itself raise, inside db_worker's transaction, so the row stays READY and every
child that picks it up dies: one bad row stops a queue. A row whose ``args_kwargs`` is not an
object of ``args`` and ``kwargs`` makes db_worker raise again from its own failure handling. Both
come from hand-edited rows or buggy producers writing the table directly.

Inside each child, the backend's ``get_locked()`` (the query that picks the row to claim) checks
the row first; one that cannot run is recorded FAILED with the error reading it raised, in the
same transaction, and the next row is taken. Rows db_worker handles itself (a task path that
no longer imports) are left to it.

Paused queues (``task_supervisor.ops.pause``, QueuePause rows) are excluded from the pick here,
at claim time, so a pause reaches every child of every node and the other queues of a pool go
on. The paused set is read at most every PAUSES_TTL while nothing is paused, and at every claim
while something is (pauses are rare; a resume is then seen by the very next claim): a pause
starts to hold at most PAUSES_TTL after it is committed.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from task_supervisor import events

log = logging.getLogger("task_supervisor.worker")

MAX_SKIPPED = 10  # unrunnable rows failed per pick, before letting db_worker poll again
PAUSES_TTL = 0.5  # seconds a read of the paused queues is trusted while none is paused


class PausedQueues:
    """The queues paused by operators, as this child last read them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.queues: frozenset[str] = frozenset()
        self.read_at: float | None = None
        self.installed: bool | None = None

    def get(self, alias: str) -> frozenset[str]:
        now = self.clock()
        if self.read_at is not None and not self.queues and now - self.read_at < PAUSES_TTL:
            return self.queues
        if self.installed is None:
            from django.apps import apps

            self.installed = apps.is_installed("task_supervisor")
        if self.installed:
            from task_supervisor.models import QueuePause

            self.queues = frozenset(QueuePause.objects.using(alias).values_list("queue", flat=True))
        self.read_at = now
        return self.queues


def install(
    model: Any,
    may_claim: Callable[[], bool] = lambda: True,
    paused: PausedQueues | None = None,
    pick: Callable[[Any, Callable[[Any], Any]], Any] | None = None,
    first: Callable[[Any], Any] | None = None,
    on_empty: Callable[[], None] = lambda: None,
) -> None:
    """Wrap ``get_locked`` of the model's queryset class; installing again replaces the guard.

    ``may_claim`` is asked first: while the node's lease does not hold, nothing is claimed.
    Rows of paused queues are never picked. ``pick`` (``worker/flow.py``, when limits are
    declared) picks in place of the backend's own query, which it is handed. ``first``
    (``worker/fastpath.py``) runs the backend's own query in its place, compiled once.
    ``on_empty`` is told of each claim attempt that found no row (the fleet's herd figures).
    """
    paused = paused or PausedQueues()
    queryset_class = type(model.objects.get_queryset())
    original = getattr(queryset_class.get_locked, "task_supervisor_unguarded", queryset_class.get_locked)
    backend_query = original if first is None else first

    def get_locked(self: Any) -> Any:
        if not may_claim():
            return None
        if queues := paused.get(self.db):
            self = self.exclude(queue_name__in=sorted(queues))
        for attempt in range(MAX_SKIPPED):
            row = backend_query(self) if pick is None else pick(self, original)
            if row is None:
                if attempt == 0:
                    on_empty()
                return None
            error = unrunnable(row)
            if error is None:
                return row
            fail(model, row, error)
        return None

    get_locked.task_supervisor_unguarded = original  # type: ignore[attr-defined]
    queryset_class.get_locked = get_locked


def unrunnable(row: Any) -> BaseException | None:
    """The error that claiming or reading ``row`` would raise, if db_worker would not survive it."""
    from django.core.exceptions import SuspiciousOperation

    if not isinstance(row.worker_ids, list):
        return TypeError(f"worker_ids is a {type(row.worker_ids).__name__}, not a list; the row cannot be claimed")
    try:
        row.task_result  # noqa: B018 - reading it parses the arguments as db_worker will
    except (ImportError, SuspiciousOperation):
        return None  # db_worker records these FAILED itself and goes on
    except Exception as exc:
        return exc
    return None


def fail(model: Any, row: Any, error: BaseException) -> None:
    from django.utils import timezone

    model.objects.filter(pk=row.pk).update(
        status="FAILED",
        finished_at=timezone.now(),
        return_value=None,
        exception_class_path=f"{type(error).__module__}.{type(error).__qualname__}",
        traceback="".join(traceback.format_exception(error)),
    )
    log.error(
        "Task %s (%s) cannot run as stored and was marked FAILED: %s: %s",
        row.pk,
        row.task_path,
        type(error).__name__,
        error,
        extra={"event": events.TASK_UNRUNNABLE, "task_id": str(row.pk)},
    )
