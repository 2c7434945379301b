"""When schedules fire: pure functions of a schedule and ``now``, no clock and no database.

Slots are instants (aware datetimes in UTC). Cron expressions are read in the schedule's own
time zone, so the two days a year when the clocks change need rules; these are the rules:

- Clocks go back (a wall time happens twice): a schedule whose hour field covers every hour
  (``*/15 * * * *``) fires at both occurrences, so it keeps firing every 15 minutes of real
  time; any other schedule fires at the first occurrence only, so a daily job runs once.
- Clocks go forward (a wall time does not exist): the slot fires as far after the gap as it
  was into it, e.g. 02:30 on the spring-forward day in Europe/Berlin fires at 03:30 CEST. A
  slot that lands on an instant another slot already has fires once, so an hourly job fires
  once in the short hour and a daily job at 02:30 fires once that day.

``every`` schedules are aligned to the Unix epoch, so every replica computes the same slots.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

LATE_AFTER = 10.0  # seconds; a slot found later than this after its time counts as missed
MAX_CATCH_UP = 100  # missed = "all" enqueues at most this many missed slots of a schedule
MISSED_POLICIES = ("skip", "latest", "all")
OVERLAP_POLICIES = ("allow", "skip")

# Windows next_slots() searches in turn; the last spans leap days falling on a given weekday.
_SEARCH_SPANS = (60.0, 3600.0, 86400.0, 31 * 86400.0, 366 * 86400.0, 4 * 366 * 86400.0, 28 * 366 * 86400.0)
_DST_MARGIN = dt.timedelta(hours=3)  # more than any zone's clock change


class Cron:
    """A parsed cron expression: five fields, an ``@daily`` style alias, or six with seconds last."""

    def __init__(self, expression: str) -> None:
        fields = expression.split() if isinstance(expression, str) else []
        alias = len(fields) == 1 and fields[0].startswith("@")
        if not (alias or len(fields) in (5, 6)) or not croniter.is_valid(expression):
            raise ValueError(f"{expression!r} is not a cron expression")
        self.expression = expression
        expanded = croniter(expression).expanded
        hours = expanded[1]
        # Fires in every hour: both occurrences of a repeated wall time are real slots.
        self.every_hour = hours == ["*"] or len(set(hours)) == 24

    def walls(self, after: dt.datetime, until: dt.datetime) -> Iterable[dt.datetime]:
        """Naive wall times matching the expression, strictly after ``after`` up to ``until``."""
        it = croniter(self.expression, after)
        while True:
            try:
                wall = it.get_next(dt.datetime)
            except CroniterBadDateError:  # no match for years: a date such as 30 February
                return
            if wall > until:
                return
            yield wall


def cron_slots(cron: Cron, zone: ZoneInfo, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Instants in (start, end] at which ``cron`` fires in ``zone``, sorted, each once."""
    if end <= start:
        return []
    wall_start = start.astimezone(zone).replace(tzinfo=None)
    wall_end = end.astimezone(zone).replace(tzinfo=None)
    steady = start.astimezone(zone).utcoffset() == end.astimezone(zone).utcoffset()
    # A clock change in the window makes wall time jump or repeat: look a margin either side
    # and let the instants decide. Otherwise walls and instants map one to one.
    margin = dt.timedelta(0) if steady and end - start <= dt.timedelta(days=1) else _DST_MARGIN
    folds = (0, 1) if cron.every_hour else (0,)
    found = set()
    for wall in cron.walls(min(wall_start, wall_end) - margin, max(wall_start, wall_end) + margin):
        for fold in folds:
            instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
            if start < instant <= end:
                found.add(instant)
    return sorted(found)


def every_slots(period: float, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Instants in (start, end] that are whole multiples of ``period`` seconds since the epoch."""
    step = round(period * 1_000_000)
    if step <= 0 or end <= start:
        return []
    first = _micros(start) // step + 1
    last = _micros(end) // step
    return [EPOCH + dt.timedelta(microseconds=k * step) for k in range(first, last + 1)]


def _micros(moment: dt.datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def slots(cron: Cron | None, every: float | None, zone: ZoneInfo, start: dt.datetime, end: dt.datetime) -> list:
    if cron is not None:
        return cron_slots(cron, zone, start, end)
    assert every is not None
    return every_slots(every, start, end)


def next_slots(
    cron: Cron | None, every: float | None, zone: ZoneInfo, after: dt.datetime, count: int = 1
) -> list[dt.datetime]:
    """The next ``count`` slots after ``after``; fewer if the schedule never fires again
    (``0 0 30 2 *`` never does)."""
    found: list[dt.datetime] = []
    cursor = after
    for span in _SEARCH_SPANS:
        end = cursor + dt.timedelta(seconds=span)
        found += slots(cron, every, zone, cursor, end)
        cursor = end
        if len(found) >= count:
            break
    return found[:count]


def select(
    due: list[dt.datetime], now: dt.datetime, missed: str, within: float
) -> tuple[list[dt.datetime], list[dt.datetime]]:
    """Which of the slots due since the last look fire now, and which are dropped as missed.

    A slot found within LATE_AFTER of its time is on time and always fires. Older ones were
    missed (the scheduler was down or the database was): ``skip`` drops them; ``latest`` fires
    the most recent one, unless an on-time slot supersedes it; ``all`` fires each (at most
    MAX_CATCH_UP). ``latest`` and ``all`` never fire a slot older than ``within`` seconds.
    """
    on_time = [s for s in due if (now - s).total_seconds() <= LATE_AFTER]
    late = [s for s in due if (now - s).total_seconds() > LATE_AFTER]
    recent = [s for s in late if (now - s).total_seconds() <= within]
    if missed == "skip":
        keep: list[dt.datetime] = []
    elif missed == "latest":
        keep = recent[-1:] if not on_time else []
    else:
        keep = recent[-MAX_CATCH_UP:]
    fire = keep + on_time
    return fire, [s for s in due if s not in fire]


def start_cursor(last_slot: dt.datetime | None, now: dt.datetime, within: float) -> dt.datetime:
    """Where a scheduler starts looking for due slots of a schedule.

    After the last slot in the run log (so slots missed while no scheduler ran are found), but
    never further back than the missed-run bound; a schedule never run starts now.
    """
    if last_slot is None:
        return now
    return max(last_slot, now - dt.timedelta(seconds=within + LATE_AFTER))
