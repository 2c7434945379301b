"""The scheduler child: enqueues each due slot of each schedule, once across every replica.

It runs as a supervised child of every supervisor with ``[scheduler] enabled``. No leader is
elected and no lock is held between slots: each slot is claimed by inserting its unique
(schedule, slot) row into the run log in the same transaction as the task row, so whichever
replica commits first enqueues it and the others' inserts fail on the unique key. A replica
that dies mid-transaction leaves nothing behind: its transaction rolls back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from task_supervisor import events
from task_supervisor.scheduler import timing
from task_supervisor.scheduler.spec import Schedule
from task_supervisor.wire import protocol
from task_supervisor.wire.spec import CHILD_EXIT_BOOT_FAILED, CHILD_EXIT_OK

log = logging.getLogger("task_supervisor.scheduler")

MAX_SLEEP = 0.5  # seconds; how long the loop sleeps at most, to notice a stop request
OVERRIDES_INTERVAL = 1.0  # seconds between reads of the schedules switched off or on at run time
DB_RETRY = 1.0  # seconds before a slot that hit a database error is tried again


# Outcomes of a slot: enqueued here; enqueued by another replica; skipped while the previous
# run is still READY or RUNNING (overlap = "skip"); dropped as missed (the missed policy).
FIRED, TAKEN, OVERLAP, MISSED = "fired", "taken", "overlap", "missed"
SLOT_EVENTS = {
    FIRED: events.SLOT_FIRED,
    TAKEN: events.SLOT_TAKEN,
    OVERLAP: events.SLOT_OVERLAP,
    MISSED: events.SLOT_MISSED,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    schedule: str
    slot: dt.datetime
    kind: str
    task_id: str = ""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Runner:
    """Looks for due slots and fires them; ``now`` comes from ``clock`` so tests can drive it."""

    def __init__(
        self,
        schedules: list[Schedule],
        node: str,
        on_outcome: Callable[[Outcome, dt.datetime], None] = lambda outcome, now: None,
        clock: Callable[[], dt.datetime] = utcnow,
        on_overrides: Callable[[], None] = lambda: None,
    ) -> None:
        self.all_schedules = schedules
        self.schedules = [s for s in schedules if s.enabled]  # those that fire: settings, then overrides
        self.overrides: dict[str, bool] = {}
        self.overrides_at: dt.datetime | None = None  # when the overrides were last read
        self.started = False
        self.node = node
        self.on_outcome = on_outcome
        self.on_overrides = on_overrides  # called after a change of the overrides read
        self.clock = clock
        self.cursors: dict[str, dt.datetime] = {}  # per schedule: every slot up to here is handled
        self.retry_at: dict[str, dt.datetime] = {}

    def start(self) -> None:
        """Pick up where the run log says each schedule left off."""
        from django.db.models import Max

        from task_supervisor.models import ScheduleRun

        now = self.clock()
        self.read_overrides(now)
        for schedule in self.schedules:
            alias = database_of(schedule)
            runs = ScheduleRun.objects.using(alias).filter(schedule=schedule.name, manual=False)
            last = runs.aggregate(last=Max("slot"))["last"]
            self.cursors[schedule.name] = timing.start_cursor(last, now, schedule.missed_within)
        self.started = True

    def read_overrides(self, now: dt.datetime) -> None:
        """Apply ScheduleOverride rows: a schedule switched on fires from now on (no catch-up of
        the time it was off); one switched off stops firing."""
        from task_supervisor.models import ScheduleOverride

        self.overrides_at = now
        names = [s.name for s in self.all_schedules]
        aliases = {database_of(s) for s in self.all_schedules} or {"default"}
        overrides: dict[str, bool] = {}
        for alias in sorted(aliases):
            rows = ScheduleOverride.objects.using(alias).filter(schedule__in=names)
            overrides.update(rows.values_list("schedule", "enabled"))
        changed, self.overrides = overrides != self.overrides, overrides
        enabled = [s for s in self.all_schedules if overrides.get(s.name, s.enabled)]
        for schedule in enabled:
            if schedule.name not in self.cursors and self.started:
                self.cursors[schedule.name] = now  # switched on since start
        for schedule in self.schedules:
            if schedule not in enabled:
                self.cursors.pop(schedule.name, None)
                self.retry_at.pop(schedule.name, None)
        self.schedules = enabled
        if changed and self.started:
            self.on_overrides()

    def tick(self) -> list[Outcome]:
        """Fire every slot due now; a database error leaves the slot for the next tick."""
        outcomes = []
        now = self.clock()
        if self.overrides_at is None or (now - self.overrides_at).total_seconds() >= OVERRIDES_INTERVAL:
            try:
                self.read_overrides(now)
            except Exception as exc:
                log.error(
                    "Could not read the schedule overrides (%s: %s); keeping the last ones",
                    type(exc).__name__,
                    exc,
                    extra={"event": events.SCHEDULE_ERROR},
                )
                close_connections()
        for schedule in self.schedules:
            now = self.clock()
            if (retry := self.retry_at.get(schedule.name)) is not None and now < retry:
                continue
            cursor = self.cursors[schedule.name]
            due = schedule.slots(cursor, now)
            _, dropped = timing.select(due, now, schedule.missed, schedule.missed_within)
            for slot in due:
                if slot in dropped:
                    outcome = Outcome(schedule.name, slot, MISSED)
                else:
                    try:
                        outcome = fire_slot(schedule, slot, self.node)
                    except Exception as exc:
                        log.error(
                            "Schedule %s: slot %s not enqueued yet (%s: %s); trying again in %gs",
                            schedule.name,
                            slot.isoformat(),
                            type(exc).__name__,
                            exc,
                            DB_RETRY,
                            extra={"event": events.SCHEDULE_ERROR, "schedule": schedule.name},
                        )
                        close_connections()
                        self.retry_at[schedule.name] = now + dt.timedelta(seconds=DB_RETRY)
                        break
                self.cursors[schedule.name] = slot
                outcomes.append(outcome)
                self.on_outcome(outcome, self.clock())
            else:
                self.retry_at.pop(schedule.name, None)
                self.cursors[schedule.name] = max(self.cursors[schedule.name], now)
        return outcomes

    def next_due(self) -> dt.datetime | None:
        moments = [m for s in self.schedules if (m := self.next_slot(s)) is not None]
        moments += list(self.retry_at.values())
        return min(moments) if moments else None

    def next_slot(self, schedule: Schedule) -> dt.datetime | None:
        found = schedule.next_slots(self.cursors.get(schedule.name, self.clock()), 1)
        return found[0] if found else None

    def serve(self, stopping: Callable[[], bool], sleep: Callable[[float], None] = time.sleep) -> None:
        while not stopping():
            self.tick()
            due = self.next_due()
            wait = MAX_SLEEP if due is None else (due - self.clock()).total_seconds()
            if wait > 0:
                sleep(min(wait, MAX_SLEEP))


def fire_slot(schedule: Schedule, slot: dt.datetime, node: str) -> Outcome:
    """Claim the slot and enqueue its task in one transaction; TAKEN if another replica did."""
    from django.db import IntegrityError

    from task_supervisor.models import ScheduleRun

    alias = database_of(schedule)
    try:
        with write_transaction(alias):
            run = ScheduleRun.objects.using(alias).create(schedule=schedule.name, slot=slot, node=node)
            if schedule.overlap == "skip" and previous_still_running(schedule, alias, run.pk):
                return Outcome(schedule.name, slot, OVERLAP)
            result = schedule.task().enqueue(*schedule.args, **schedule.kwargs)
            run.task_result_id = str(result.id)
            run.save(using=alias, update_fields=["task_result_id"])
    except IntegrityError:
        return Outcome(schedule.name, slot, TAKEN)
    return Outcome(schedule.name, slot, FIRED, str(result.id))


def previous_still_running(schedule: Schedule, alias: str, this_run: int) -> bool:
    from task_supervisor.models import ScheduleRun

    previous = (
        ScheduleRun.objects.using(alias)
        .filter(schedule=schedule.name)
        .exclude(pk=this_run)
        .exclude(task_result_id="")
        .order_by("-slot")
        .values_list("task_result_id", flat=True)
        .first()
    )
    if previous is None:
        return False
    model = backend_of(schedule).model
    return model.objects.using(alias).filter(pk=previous, status__in=("READY", "NEW", "RUNNING")).exists()


_backends: dict[str, Any] = {}


def backend_of(schedule: Schedule) -> Any:
    """The database backend the schedule's tasks go to, resolved once per schedule."""
    if schedule.name not in _backends:
        from task_supervisor import compat

        _backends[schedule.name] = compat.resolve(schedule.task().backend)
    return _backends[schedule.name]


def database_of(schedule: Schedule) -> str:
    """The database alias the schedule's task rows are written to; the run log goes there too."""
    return backend_of(schedule).db_alias


@contextlib.contextmanager
def write_transaction(alias: str) -> Iterator[None]:
    """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE), so it waits for
    busy workers instead of failing to upgrade a read lock; a plain transaction elsewhere."""
    from django.db import connections, transaction

    connection = connections[alias]
    if connection.vendor == "sqlite":
        # Connecting sets transaction_mode from OPTIONS (Django 5.1+): connect first, or the
        # connect inside atomic() would undo the IMMEDIATE set below on a fresh connection.
        connection.ensure_connection()
    if connection.vendor != "sqlite" or not hasattr(connection, "transaction_mode"):
        with transaction.atomic(using=alias):
            yield
        return
    old = connection.transaction_mode
    connection.transaction_mode = "IMMEDIATE"
    try:
        with transaction.atomic(using=alias):
            yield
    finally:
        connection.transaction_mode = old


def close_connections() -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        with contextlib.suppress(Exception):
            connection.close()


# -- the child -------------------------------------------------------------------------------


def report(runner: Runner, reporter: protocol.Reporter, outcome: Outcome, now: dt.datetime) -> None:
    """Tell the supervisor what became of a slot, and log it."""
    schedule = next(s for s in runner.schedules if s.name == outcome.schedule)
    upcoming = runner.next_slot(schedule)
    reporter.send(
        protocol.SLOT_FIRED,
        schedule=outcome.schedule,
        slot=outcome.slot.isoformat(),
        outcome=outcome.kind,
        lag=round((now - outcome.slot).total_seconds(), 6),
        task_id=outcome.task_id,
        next=upcoming.isoformat() if upcoming else None,
    )
    level = logging.INFO if outcome.kind in (FIRED, MISSED) else logging.DEBUG
    log.log(
        level,
        "Schedule %s: slot %s %s%s",
        outcome.schedule,
        outcome.slot.isoformat(),
        {FIRED: "enqueued", TAKEN: "taken by another replica", OVERLAP: "skipped (previous run still going)"}.get(
            outcome.kind, "missed (dropped by the missed-run policy)"
        ),
        f" as task {outcome.task_id}" if outcome.task_id else "",
        extra={
            "event": SLOT_EVENTS[outcome.kind],
            "schedule": outcome.schedule,
            "task_id": outcome.task_id or None,
        },
    )


def listing(runner: Runner) -> list[dict[str, Any]]:
    """The schedules as status shows them: those enabled in settings or switched at run time."""
    return [
        {
            "name": s.name,
            "when": s.when,
            "next": (n.isoformat() if s in runner.schedules and (n := runner.next_slot(s)) else None),
            "enabled": s in runner.schedules,
            "override": runner.overrides.get(s.name),  # None: as settings say
        }
        for s in runner.all_schedules
        if s.enabled or s.name in runner.overrides
    ]


def serve(node: str, reporter: protocol.Reporter, sleep: Callable[[float], None] = time.sleep) -> int:
    """Entry point inside the scheduler child, Django set up; returns the exit code. ``sleep`` is
    its wait between turns: the control channel's, which answers the supervisor's pings."""
    from django.conf import settings

    from task_supervisor.scheduler import spec
    from task_supervisor.worker import proctitle

    stop = {"requested": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    schedules, problems = spec.load(settings)
    if problems:
        reporter.send(protocol.BOOT_FAILED, reason="; ".join(str(p) for p in problems)[:500])
        return CHILD_EXIT_BOOT_FAILED

    runner = Runner(
        schedules,
        node,
        lambda outcome, now: report(runner, reporter, outcome, now),
        on_overrides=lambda: reporter.send(protocol.SCHEDULES, schedules=listing(runner)),
    )
    try:
        runner.start()
    except Exception as exc:
        reporter.send(protocol.BOOT_FAILED, reason=f"reading the run log failed: {type(exc).__name__}: {exc}"[:500])
        return CHILD_EXIT_BOOT_FAILED
    proctitle.set_title(f"task-supervisor: scheduler ({len(runner.schedules)} schedules)")
    reporter.send(protocol.READY, schedules=listing(runner))
    runner.serve(lambda: stop["requested"], sleep)
    return CHILD_EXIT_OK
