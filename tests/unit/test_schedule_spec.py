"""settings.PERIODIC_TASKS read into schedules: every mistake named, with its check id.

Task imports need Django and are tested end to end (tests/realproc/test_scheduler.py); here
``resolve_tasks=False`` reads the shape alone.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from task_supervisor.scheduler import spec


def load(table: Any, time_zone: str = "UTC") -> tuple[list[spec.Schedule], list[str]]:
    schedules, problems = spec.load(SimpleNamespace(PERIODIC_TASKS=table, TIME_ZONE=time_zone), resolve_tasks=False)
    return schedules, [str(p) for p in problems]


def one(entry: Any) -> list[str]:
    return load({"job": entry})[1]


def test_a_full_entry_reads_into_a_schedule():
    entry = {
        "task": "reports.tasks.build_report",
        "cron": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "args": [1],
        "kwargs": {"kind": "daily"},
        "queue_name": "reports",
        "priority": 10,
        "enabled": True,
        "missed": "all",
        "missed_within": "6h",
        "overlap": "skip",
    }
    (schedule,), problems = load({"nightly-report": entry})
    assert problems == []
    assert schedule.name == "nightly-report" and schedule.zone.key == "Europe/Berlin"
    assert schedule.args == (1,) and schedule.kwargs == {"kind": "daily"}
    assert (schedule.missed, schedule.missed_within, schedule.overlap) == ("all", 6 * 3600, "skip")
    assert schedule.describe() == "At 03:00"


def test_defaults_take_the_settings_time_zone():
    (schedule,), _ = load({"tick": {"task": "a.b.c", "every": "30s"}}, time_zone="Asia/Tokyo")
    assert schedule.zone.key == "Asia/Tokyo" and schedule.every == 30.0
    assert (schedule.missed, schedule.overlap, schedule.enabled) == ("latest", "allow", True)
    assert schedule.describe() == "Every 30 seconds, aligned to the Unix epoch"


def test_no_setting_means_no_schedules():
    assert spec.load(SimpleNamespace()) == ([], [])


def test_not_a_dict():
    assert load(["a"])[1] == ["task_supervisor.E001: PERIODIC_TASKS must be a dict of name -> schedule, not list."]
    assert one("0 3 * * *") == [
        "task_supervisor.E001: PERIODIC_TASKS['job']: must be a dict with 'task' and 'cron' or 'every', not str."
    ]


def test_an_unknown_key_is_named_with_a_suggestion():
    (problem,) = one({"task": "a.b.c", "cron": "@daily", "time_zone": "UTC"})
    assert problem.startswith("task_supervisor.E001: PERIODIC_TASKS['job']: unknown key 'time_zone'")
    assert "did you mean 'timezone'?" in problem


def test_a_missing_task_path():
    assert one({"cron": "@daily"})[0].startswith("task_supervisor.E001: PERIODIC_TASKS['job']: 'task' must be")


def test_a_cron_that_does_not_parse():
    (problem,) = one({"task": "a.b.c", "cron": "0 25 * * *"})
    assert problem.startswith("task_supervisor.E003: PERIODIC_TASKS['job']: cron '0 25 * * *' does not parse")


def test_a_cron_that_never_fires():
    (problem,) = one({"task": "a.b.c", "cron": "0 0 30 2 *"})
    assert problem == "task_supervisor.E003: PERIODIC_TASKS['job']: cron '0 0 30 2 *' never fires (no date matches it)."


def test_an_unknown_time_zone():
    (problem,) = one({"task": "a.b.c", "cron": "@daily", "timezone": "Mars/Olympus"})
    assert problem.startswith("task_supervisor.E004: PERIODIC_TASKS['job']: unknown time zone 'Mars/Olympus'")


def test_cron_and_every_both_or_neither():
    assert one({"task": "a.b.c", "cron": "@daily", "every": "1h"})[0].startswith(
        "task_supervisor.E005: PERIODIC_TASKS['job']: has both 'cron' and 'every'"
    )
    assert one({"task": "a.b.c"})[0].startswith(
        "task_supervisor.E005: PERIODIC_TASKS['job']: has neither 'cron' nor 'every'"
    )


def test_a_bad_every():
    assert one({"task": "a.b.c", "every": "soon"})[0].startswith("task_supervisor.E006: PERIODIC_TASKS['job']: every")
    assert one({"task": "a.b.c", "every": 0})[0].startswith("task_supervisor.E006")


def test_bad_options_are_each_named():
    problems = one(
        {
            "task": "a.b.c",
            "every": "1m",
            "args": {"not": "a list"},
            "kwargs": {"when": object()},
            "priority": "high",
            "enabled": "yes",
            "missed": "some",
            "overlap": "never",
        }
    )
    assert all(p.startswith("task_supervisor.E007") for p in problems), problems
    text = "\n".join(problems)
    for key in ("'args'", "'kwargs'", "'priority'", "'enabled'", "'missed'", "'overlap'"):
        assert key in text


def test_each_entry_is_checked_and_good_ones_survive():
    schedules, problems = load({"good": {"task": "a.b.c", "every": "1s"}, "bad": {"task": "a.b.c"}})
    assert [s.name for s in schedules] == ["good"] and len(problems) == 1


# Anything JSON-ish a settings file could hold.
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
plausible = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from(["a.b.c", "", "nodots"]) | st.text(max_size=10),
        "cron": st.sampled_from(["0 3 * * *", "@daily", "*/5 * * * * 30", "61 * * * *", "0 0 30 2 *", ""]) | values,
        "every": st.sampled_from(["30s", "1h", "0", "-1s", "soon"]) | values,
        "timezone": st.sampled_from(["UTC", "Europe/Berlin", "Nowhere/City", "../etc", ""]) | values,
        "args": values,
        "kwargs": values,
        "missed": st.sampled_from(["skip", "latest", "all", "none"]) | values,
        "missed_within": values,
        "overlap": st.sampled_from(["allow", "skip", "x"]) | values,
        "priority": values,
        "enabled": values,
        "queue_name": values,
        "backend": values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), plausible | values, max_size=3) | values)
def test_any_input_gives_schedules_or_named_problems_never_a_traceback(table):
    schedules, problems = load(table)
    for problem in problems:
        assert problem.startswith("task_supervisor.E0") and "PERIODIC_TASKS" in problem
    if isinstance(table, dict):
        assert {s.name for s in schedules} <= set(map(str, table))
        for schedule in schedules:
            assert schedule.cron is not None or schedule.every
