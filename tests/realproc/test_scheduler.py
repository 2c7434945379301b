"""The scheduler end to end: real supervisors, their scheduler children, real databases.

Schedules reach the test project's settings as JSON in TS_PERIODIC_TASKS.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from task_supervisor import events, exitcodes
from tests.realproc.test_observe import get, observed, status
from tests.realproc.test_supervision import ONE_POOL, wait_status
from tests.support import PROJECT, SupervisorProcess, config_toml, wait_until

SECOND = dt.timedelta(seconds=1)


def periodic(**schedules: dict) -> dict[str, str]:
    return {"TS_PERIODIC_TASKS": json.dumps(schedules)}


def runs(name: str) -> list:
    from task_supervisor.models import ScheduleRun

    return list(ScheduleRun.objects.filter(schedule=name).order_by("slot"))


def wait_runs(name: str, count: int, timeout: float = 40.0) -> list:
    return wait_until(lambda: len(found := runs(name)) >= count and found, timeout, message=f"{count} runs of {name}")


def task_rows(path: str) -> list:
    from django_tasks_db.models import DBTaskResult

    return list(DBTaskResult.objects.filter(task_path=path))


def scheduler_child(sup: SupervisorProcess) -> psutil.Process:
    def find() -> psutil.Process | None:
        return next((c for c in sup.children() if "scheduler" in " ".join(c.cmdline())), None)

    return wait_until(find, 20, message=lambda: f"the scheduler child; log:\n{sup.tail()}")


def assert_consecutive(slots: list[dt.datetime], step: dt.timedelta = SECOND) -> None:
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(gap == step for gap in gaps), f"slots not consecutive: {slots}"


def test_each_slot_is_enqueued_once_on_time_and_its_task_runs(supervisor, db, tmp_path):
    from django_tasks_db.models import DBTaskResult

    config, port, _ = observed(tmp_path, ONE_POOL)
    supervisor(config, **periodic(tick={"task": "tsapp.tasks.noop", "every": "1s"}))
    found = wait_runs("tick", 4)
    assert_consecutive([r.slot for r in found])
    ids = [r.task_result_id for r in found]
    assert len(set(ids)) == len(ids) and all(ids)
    wait_until(lambda: DBTaskResult.objects.filter(id__in=ids, status="SUCCESSFUL").count() == len(ids), 20)
    lags = [(r.enqueued_at - r.slot).total_seconds() for r in found]
    assert all(0 <= lag < 1.0 for lag in lags), lags  # the benchmark measures it; this only bounds it

    snapshot = json.loads(status(tmp_path / "sup0" / "config.toml", "--json").stdout)
    scheduler = snapshot["scheduler"]
    assert scheduler["state"] == "idle" and scheduler["pid"]
    (tick,) = scheduler["schedules"]
    assert tick["name"] == "tick" and tick["when"] == "every 1s" and tick["last_slot"] and tick["next"]
    code, body = get(port, "/metrics")
    text = body.decode()
    assert code == 200
    assert 'task_supervisor_schedule_slots_total{outcome="fired",schedule="tick"}' in text
    assert 'task_supervisor_schedule_lag_seconds_count{schedule="tick"}' in text


@pytest.mark.parametrize("db", ["sqlite", "postgres", "mariadb"], indirect=True)
def test_a_crashed_scheduler_is_restarted_without_losing_or_doubling_slots(supervisor, db):
    sup = supervisor(
        config_toml(ONE_POOL), **periodic(tick={"task": "tsapp.tasks.noop", "every": "1s", "missed": "all"})
    )
    wait_runs("tick", 2)
    first = scheduler_child(sup)
    first.send_signal(signal.SIGKILL)
    sup.wait_event(events.CHILD_CRASHED, pool="scheduler")
    second = scheduler_child(sup)
    assert second.pid != first.pid
    before = len(runs("tick"))
    found = wait_runs("tick", before + 3)
    assert_consecutive([r.slot for r in found])  # the slot due while it was down was caught up
    ids = [r.task_result_id for r in found]
    assert len(task_rows("tsapp.tasks.noop")) == len(ids) == len(set(ids))
    assert "task_lost" not in sup.log() and "was running in child" not in sup.log()


@pytest.mark.parametrize("db", ["postgres", "mariadb-rr"], indirect=True)
def test_three_supervisors_share_schedules_with_exactly_one_task_per_slot(supervisor, db):
    schedules = periodic(
        fast={"task": "tsapp.tasks.noop", "every": "1s", "missed": "all"},
        slow={"task": "tsapp.tasks.add", "every": "2s", "args": [1, 2], "missed": "all"},
    )
    sups = [supervisor(config_toml(ONE_POOL, node=f"replica{i}"), **schedules) for i in range(3)]
    for sup in sups:
        scheduler_child(sup)
    fast = wait_runs("fast", 12, timeout=60)
    slow = wait_runs("slow", 6, timeout=60)
    for sup in sups:
        sup.signal(signal.SIGTERM)
    for sup in sups:
        assert sup.wait_exit() == 0
    fast, slow = runs("fast"), runs("slow")
    assert_consecutive([r.slot for r in fast])
    assert_consecutive([r.slot for r in slow], 2 * SECOND)
    paths = {"tsapp.tasks.noop": fast, "tsapp.tasks.add": slow}
    for path, found in paths.items():
        ids = [r.task_result_id for r in found]
        rows = task_rows(path)
        assert len(rows) == len(ids) == len(set(ids)), (len(rows), len(ids))
        assert {str(r.id) for r in rows} == set(ids)
        # A slot fired just before the drain may wait READY: draining children start no new task
        # (on a loaded machine the claim can lag the slot by more than the time left). Nothing
        # is left RUNNING or FAILED.
        assert {r.status for r in rows} <= {"SUCCESSFUL", "READY"}, [(r.id, r.status) for r in rows]
    assert len({r.node for r in fast + slow}) >= 2, "one replica fired every slot; the others never raced"

    # The next supervisor, with no schedule, runs what waits: every slot's task runs.
    supervisor(config_toml(ONE_POOL, node="replica3"))
    for path, found in paths.items():
        wait_until(
            lambda path=path: {r.status for r in task_rows(path)} == {"SUCCESSFUL"},
            30,
            message=lambda path=path: f"every {path} SUCCESSFUL, have {sorted(r.status for r in task_rows(path))}",
        )
        assert len(task_rows(path)) == len(found)


def test_overlap_skip_waits_for_the_previous_run(supervisor, db, tmp_path):
    sup = supervisor(
        config_toml(ONE_POOL),
        **periodic(slow={"task": "tsapp.tasks.sleep", "every": "1s", "args": [2.5], "overlap": "skip"}),
    )
    wait_until(lambda: sum(1 for r in runs("slow") if not r.task_result_id) >= 3, 30, message="skipped slots")
    sup.signal(signal.SIGTERM)
    sup.wait_exit()
    from django_tasks_db.models import DBTaskResult

    fired = [r for r in runs("slow") if r.task_result_id]
    results = {str(t.id): t for t in DBTaskResult.objects.filter(id__in=[r.task_result_id for r in fired])}
    for previous, run in itertools.pairwise(fired):
        before = results[previous.task_result_id]
        assert before.finished_at is not None and before.finished_at <= run.enqueued_at, "runs overlapped"


def test_a_slot_missed_while_no_scheduler_ran_is_caught_up_once(supervisor, db):
    from django.utils import timezone

    from task_supervisor.models import ScheduleRun

    now = timezone.now().replace(microsecond=0)
    ScheduleRun.objects.create(schedule="report", slot=now - dt.timedelta(minutes=10), node="gone")
    supervisor(
        config_toml(ONE_POOL), **periodic(report={"task": "tsapp.tasks.noop", "every": "1m", "missed": "latest"})
    )
    found = wait_runs("report", 2)
    caught_up = found[1]
    assert now - dt.timedelta(minutes=1) <= caught_up.slot <= now  # the latest missed slot, only that one
    assert caught_up.slot.second == 0 and caught_up.task_result_id
    assert len(runs("report")) == 2


BAD = {
    "no-task": {"task": "tsapp.tasks.gone", "every": "1m"},
    "bad-cron": {"task": "tsapp.tasks.noop", "cron": "0 25 * * *"},
    "bad-zone": {"task": "tsapp.tasks.noop", "cron": "@daily", "timezone": "Mars/Olympus"},
    "both": {"task": "tsapp.tasks.noop", "cron": "@daily", "every": "1h"},
}
BAD_IDS = ("task_supervisor.E002", "task_supervisor.E003", "task_supervisor.E004", "task_supervisor.E005")


def run_cli(tmp_path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text(config_toml(ONE_POOL))
    return subprocess.run(
        [sys.executable, "-m", "task_supervisor", *args, "-c", str(config)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), **env},  # a control socket of its own
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_schedules_fail_django_checks_check_and_run_alike(db, tmp_path):
    env = {**db.env, **periodic(**BAD)}
    manage = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=PROJECT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert manage.returncode != 0
    check = run_cli(tmp_path, "check", env=env)
    assert check.returncode == exitcodes.EX_CHECK_FAILED
    run = run_cli(tmp_path, "run", env=env)
    assert run.returncode == exitcodes.EX_SETTINGS
    for check_id in BAD_IDS:
        assert check_id in manage.stderr and check_id in check.stderr and check_id in run.stderr
    assert "task 'tsapp.tasks.gone' does not import" in check.stderr
    assert "unknown time zone 'Mars/Olympus'" in run.stderr


def test_a_disabled_scheduler_runs_no_scheduler_child(supervisor, db):
    sup = supervisor(
        config_toml(ONE_POOL + "\n[scheduler]\nenabled = false\n"),
        **periodic(tick={"task": "tsapp.tasks.noop", "every": "1s"}),
    )
    from tsapp import tasks

    wait_status(tasks.noop.enqueue(), "SUCCESSFUL")  # the pool is up and working
    assert len(sup.children()) == 1
    assert not [c for c in sup.children() if "scheduler" in " ".join(c.cmdline())]
    assert "scheduler" not in sup.log()


def test_bad_schedules_refuse_to_start_even_with_the_scheduler_disabled(db, tmp_path):
    # Django's checks fail on them, so a bare db_worker would refuse as well.
    config = tmp_path / "config.toml"
    config.write_text(config_toml(ONE_POOL + "\n[scheduler]\nenabled = false\n"))
    run = subprocess.run(
        [sys.executable, "-m", "task_supervisor", "run", "-c", str(config)],
        env={**os.environ, **db.env, **periodic(**BAD)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == exitcodes.EX_SETTINGS and "task_supervisor.E003" in run.stderr


def test_schedules_lists_next_fire_times_in_each_zone(db, tmp_path):
    env = {
        **db.env,
        **periodic(
            nightly={"task": "tsapp.tasks.noop", "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
            often={"task": "tsapp.tasks.noop", "every": "90s"},
        ),
    }
    listed = run_cli(tmp_path, "schedules", "--at", "2026-03-27T12:00:00+00:00", "--count", "3", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    by_name = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert by_name["nightly"]["timezone"] == "Europe/Berlin" and by_name["nightly"]["task"] == "tsapp.tasks.noop"
    # 02:30 does not exist on 29 March in Berlin: it fires at 03:30 CEST that day.
    assert by_name["nightly"]["next"] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]
    assert by_name["often"]["next"][0] == "2026-03-27T12:01:30+00:00"
    text = run_cli(tmp_path, "schedules", env=env).stdout
    assert "30 2 * * * in Europe/Berlin: At 02:30" in text
    assert "Every 90 seconds" in text


def test_the_admin_shows_each_schedule_with_its_last_and_next_run(db):
    from django.contrib.auth.models import User
    from django.test import Client, override_settings
    from django.utils import timezone

    from task_supervisor.models import ScheduleRun

    slot = timezone.now().replace(microsecond=0) - dt.timedelta(hours=1)
    ScheduleRun.objects.create(schedule="nightly", slot=slot, task_result_id="abc", node="n1")
    table = {"nightly": {"task": "tsapp.tasks.noop", "cron": "0 3 * * *", "timezone": "Asia/Tokyo"}}
    admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(admin)
    with override_settings(PERIODIC_TASKS=table):
        page = client.get("/admin/task_supervisor/schedulerun/").content.decode()
    assert "task-supervisor-schedules" in page and "Asia/Tokyo" in page and "0 3 * * *" in page
    assert "abc" in page  # the run log below
    assert "03:00:00 JST" in page  # the next run, in the schedule's own zone


def test_an_idle_scheduler_answers_pings_and_is_never_taken_for_hung(supervisor, db):
    # A daily schedule: the scheduler child sleeps between turns, as in the demo.
    sup = supervisor(
        config_toml(ONE_POOL, extra='hung_after = "1s"'),
        **periodic(nightly={"task": "tsapp.tasks.noop", "cron": "0 3 * * *"}),
    )
    # By status, not by command line: this test's folder name holds "scheduler" for every child.
    def idle_scheduler() -> dict | None:
        found = sup.status().get("scheduler") or {}
        return found if found.get("state") == "idle" else None

    first = wait_until(idle_scheduler, 20, 0.2, sup.tail)
    time.sleep(6.0)  # three pings at least (one every 2 s), each due an answer within 1 s
    assert not sup.has_event(events.CHILD_HUNG), sup.tail()
    assert sup.status()["scheduler"]["pid"] == first["pid"]
