"""Slot computation, pure: a fake ``now``, no clock and no database.

Time zones and their clock changes (2026 dates):
- Europe/Berlin: forward 29 March 02:00 -> 03:00, back 25 October 03:00 -> 02:00;
- America/New_York: forward 8 March 02:00 -> 03:00, back 1 November 02:00 -> 01:00;
- Australia/Sydney (southern): back 5 April 03:00 -> 02:00, forward 4 October 02:00 -> 03:00;
- Australia/Lord_Howe: half-hour changes, back 5 April 02:00 -> 01:30, forward 4 October 02:00 -> 02:30.
"""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from task_supervisor.scheduler import timing
from task_supervisor.scheduler.timing import Cron, cron_slots, every_slots, next_slots, select, start_cursor

UTC = dt.UTC

# zone, spring-forward day, fall-back day
DST_DAYS = [
    ("Europe/Berlin", dt.date(2026, 3, 29), dt.date(2026, 10, 25)),
    ("America/New_York", dt.date(2026, 3, 8), dt.date(2026, 11, 1)),
    ("Australia/Sydney", dt.date(2026, 10, 4), dt.date(2026, 4, 5)),
    ("Australia/Lord_Howe", dt.date(2026, 10, 4), dt.date(2026, 4, 5)),
]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def local_days(zone: ZoneInfo, first: dt.date, days: int) -> tuple[dt.datetime, dt.datetime]:
    """The instants from local midnight of ``first`` to local midnight ``days`` later."""
    start = dt.datetime.combine(first, dt.time(), zone).astimezone(UTC)
    end = dt.datetime.combine(first + dt.timedelta(days=days), dt.time(), zone).astimezone(UTC)
    return start - dt.timedelta(microseconds=1), end - dt.timedelta(microseconds=1)


# -- every ------------------------------------------------------------------------------------


def test_every_slots_are_aligned_to_the_epoch_whatever_the_start():
    slots = every_slots(30.0, at("2026-01-01T00:00:07+00:00"), at("2026-01-01T00:01:30+00:00"))
    assert slots == [at("2026-01-01T00:00:30+00:00"), at("2026-01-01T00:01:00+00:00"), at("2026-01-01T00:01:30+00:00")]


def test_every_slots_exclude_the_start_and_include_the_end():
    start = at("2026-01-01T00:00:00+00:00")
    assert every_slots(1.0, start, start) == []
    assert every_slots(1.0, start, start + dt.timedelta(seconds=1)) == [start + dt.timedelta(seconds=1)]


def test_every_slots_with_fractions_of_a_second_do_not_drift():
    start = at("2026-06-01T12:00:00+00:00")
    slots = every_slots(0.25, start, start + dt.timedelta(hours=1))
    assert len(slots) == 4 * 3600
    assert all((b - a) == dt.timedelta(milliseconds=250) for a, b in itertools.pairwise(slots))


def test_every_is_the_same_in_every_zone_and_across_clock_changes():
    start, end = at("2026-10-25T00:00:00+02:00"), at("2026-10-25T04:00:00+01:00")
    slots = next_slots(None, 3600.0, ZoneInfo("Europe/Berlin"), start, 10)
    assert all((b - a) == dt.timedelta(hours=1) for a, b in itertools.pairwise(slots))
    assert every_slots(3600.0, start, end) == [s for s in slots if s <= end]


# -- cron -------------------------------------------------------------------------------------


def test_cron_slots_in_the_schedules_own_zone():
    cron, zone = Cron("0 3 * * *"), ZoneInfo("Europe/Berlin")
    slots = next_slots(cron, None, zone, at("2026-01-10T12:00:00+00:00"), 2)
    assert slots == [at("2026-01-11T03:00:00+01:00"), at("2026-01-12T03:00:00+01:00")]


def test_a_sixth_field_is_seconds_last():
    slots = next_slots(Cron("* * * * * */20"), None, ZoneInfo("UTC"), at("2026-01-01T00:00:00+00:00"), 4)
    assert [s.second for s in slots] == [20, 40, 0, 20]


@pytest.mark.parametrize(
    ("alias", "expected"),
    [("@hourly", "2026-01-01T01:00:00+00:00"), ("@daily", "2026-01-02T00:00:00+00:00")],
)
def test_aliases(alias, expected):
    assert next_slots(Cron(alias), None, ZoneInfo("UTC"), at("2026-01-01T00:30:00+00:00")) == [at(expected)]


@pytest.mark.parametrize("expression", ["", "61 * * * *", "* * *", "every day", "0 3 * * * * *", 5])
def test_bad_cron_expressions_are_refused(expression):
    with pytest.raises(ValueError, match="not a cron expression"):
        Cron(expression)


def test_a_cron_that_never_fires_has_no_next_slot():
    assert next_slots(Cron("0 0 30 2 *"), None, ZoneInfo("UTC"), at("2026-01-01T00:00:00+00:00")) == []


def test_a_leap_day_schedule_finds_its_next_leap_year():
    assert next_slots(Cron("0 12 29 2 *"), None, ZoneInfo("UTC"), at("2026-01-01T00:00:00+00:00")) == [
        at("2028-02-29T12:00:00+00:00")
    ]


# -- clock changes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("zone_name", "spring", "autumn"), DST_DAYS)
@pytest.mark.parametrize("wall", ["00:00", "01:30", "02:00", "02:30", "03:00", "12:00", "23:59"])
def test_a_daily_job_runs_exactly_once_on_both_change_days(zone_name, spring, autumn, wall):
    zone = ZoneInfo(zone_name)
    hour, minute = wall.split(":")
    cron = Cron(f"{int(minute)} {int(hour)} * * *")
    for day in (spring, autumn):
        start, end = local_days(zone, day - dt.timedelta(days=1), 3)
        slots = cron_slots(cron, zone, start, end)
        per_day = [s.astimezone(zone).date() for s in slots]
        assert per_day == [day - dt.timedelta(days=1), day, day + dt.timedelta(days=1)], (zone_name, day, slots)


@pytest.mark.parametrize(("zone_name", "spring", "autumn"), DST_DAYS)
@pytest.mark.parametrize("expression", ["*/15 * * * *", "0 * * * *", "30 * * * *"])
def test_jobs_of_every_hour_keep_real_time_spacing_across_changes(zone_name, spring, autumn, expression):
    zone, cron = ZoneInfo(zone_name), Cron(expression)
    step = dt.timedelta(minutes=15) if expression.startswith("*/15") else dt.timedelta(hours=1)
    for day in (spring, autumn):
        start, end = local_days(zone, day, 1)
        slots = cron_slots(cron, zone, start, end)
        gaps = {b - a for a, b in itertools.pairwise(slots)}
        if zone_name == "Australia/Lord_Howe" and step == dt.timedelta(hours=1):
            # A half-hour change moves an hourly wall time half an hour in real time, once.
            assert gaps <= {step, step - dt.timedelta(minutes=30), step + dt.timedelta(minutes=30)}
        else:
            assert gaps == {step}, (zone_name, day, sorted(gaps))
        assert len(slots) == len(set(slots))


def test_a_wall_time_that_does_not_exist_fires_as_far_after_the_gap_as_it_was_into_it():
    zone = ZoneInfo("Europe/Berlin")
    start, end = local_days(zone, dt.date(2026, 3, 29), 1)
    assert cron_slots(Cron("30 2 * * *"), zone, start, end) == [at("2026-03-29T03:30:00+02:00")]
    assert cron_slots(Cron("0 2 * * *"), zone, start, end) == [at("2026-03-29T03:00:00+02:00")]
    # 03:30 exists and is the same instant as the shifted 02:30: one slot, not two.
    assert cron_slots(Cron("30 2,3 * * *"), zone, start, end) == [at("2026-03-29T03:30:00+02:00")]


def test_a_repeated_wall_time_fires_at_its_first_occurrence_for_a_daily_job():
    zone = ZoneInfo("Europe/Berlin")
    start, end = local_days(zone, dt.date(2026, 10, 25), 1)
    assert cron_slots(Cron("30 2 * * *"), zone, start, end) == [at("2026-10-25T02:30:00+02:00")]


def test_a_repeated_wall_time_fires_twice_for_a_job_of_every_hour():
    zone = ZoneInfo("Europe/Berlin")
    start, end = at("2026-10-25T01:59:00+02:00"), at("2026-10-25T03:01:00+01:00")
    assert cron_slots(Cron("30 * * * *"), zone, start, end) == [
        at("2026-10-25T02:30:00+02:00"),
        at("2026-10-25T02:30:00+01:00"),
    ]


def test_next_slot_from_inside_a_repeated_hour():
    zone = ZoneInfo("Europe/Berlin")
    first_pass = at("2026-10-25T02:40:00+02:00")
    assert next_slots(Cron("30 * * * *"), None, zone, first_pass) == [at("2026-10-25T02:30:00+01:00")]
    assert next_slots(Cron("30 2 * * *"), None, zone, first_pass) == [at("2026-10-26T02:30:00+01:00")]


def test_slots_found_tick_by_tick_are_the_slots_found_at_once():
    """The scheduler looks every fraction of a second: the union of its windows is the whole."""
    zone, cron = ZoneInfo("America/New_York"), Cron("*/10 * * * *")
    start, end = local_days(zone, dt.date(2026, 11, 1), 1)
    ticks = [start + dt.timedelta(minutes=7 * k) for k in range(int((end - start) / dt.timedelta(minutes=7)) + 2)]
    stepped = [s for a, b in itertools.pairwise(ticks) for s in cron_slots(cron, zone, a, b)]
    assert stepped == cron_slots(cron, zone, ticks[0], ticks[-1])


# -- missed runs ------------------------------------------------------------------------------

NOW = at("2026-05-01T12:00:00+00:00")


def minutes_ago(*minutes: float) -> list[dt.datetime]:
    return [NOW - dt.timedelta(minutes=m) for m in minutes]


def test_an_on_time_slot_fires_under_every_policy():
    due = [NOW - dt.timedelta(seconds=0.2)]
    for policy in timing.MISSED_POLICIES:
        assert select(due, NOW, policy, 3600) == (due, [])


def test_missed_skip_drops_every_late_slot():
    due = minutes_ago(30, 20, 10)
    assert select(due, NOW, "skip", 3600) == ([], due)


def test_missed_latest_fires_the_most_recent_late_slot_within_the_bound():
    due = minutes_ago(90, 30, 20, 10)
    fire, dropped = select(due, NOW, "latest", 3600)
    assert fire == minutes_ago(10) and dropped == minutes_ago(90, 30, 20)
    assert select(minutes_ago(90), NOW, "latest", 3600) == ([], minutes_ago(90))


def test_missed_latest_is_superseded_by_an_on_time_slot():
    due = [*minutes_ago(20, 10), NOW]
    assert select(due, NOW, "latest", 3600) == ([NOW], minutes_ago(20, 10))


def test_missed_all_fires_each_late_slot_within_the_bound_and_at_most_the_cap():
    due = minutes_ago(90, 30, 20, 10)
    assert select(due, NOW, "all", 3600) == (minutes_ago(30, 20, 10), minutes_ago(90))
    many = [NOW - dt.timedelta(seconds=30 + s) for s in range(500, 0, -1)]
    fire, dropped = select(many, NOW, "all", 3600)
    assert fire == many[-timing.MAX_CATCH_UP :] and len(dropped) == 500 - timing.MAX_CATCH_UP


def test_the_start_cursor_resumes_after_the_run_log_but_not_before_the_bound():
    assert start_cursor(None, NOW, 3600) == NOW
    recent = NOW - dt.timedelta(minutes=5)
    assert start_cursor(recent, NOW, 3600) == recent
    long_ago = NOW - dt.timedelta(days=30)
    assert start_cursor(long_ago, NOW, 3600) == NOW - dt.timedelta(seconds=3600 + timing.LATE_AFTER)
