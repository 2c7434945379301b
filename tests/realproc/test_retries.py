"""Retries end to end: same row, same id, delays between attempts, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from task_supervisor import events, exitcodes
from tests.realproc.test_lost_tasks import LOST_CLASS, row, wait_finished
from tests.realproc.test_supervision import ONE_POOL
from tests.support import config_toml, wait_until


def retries(path: str, body: str) -> str:
    return f'\n[retries."{path}"]\n{body}\n'


@pytest.mark.parametrize("db", ["sqlite", "postgres", "mariadb"], indirect=True)
def test_a_task_that_fails_twice_succeeds_on_its_third_attempt(supervisor, db, tmp_path):
    from tsapp import tasks

    policy = retries("tsapp.tasks.flaky", 'max_attempts = 3\ndelay = "200ms"\njitter = false\non = ["ConnectionError"]')
    sup = supervisor(config_toml(ONE_POOL + policy))
    result = tasks.flaky.enqueue(str(tmp_path / "count"), 2)
    done = wait_finished(result, "SUCCESSFUL")
    assert done.return_value == 3
    assert len(done.worker_ids) == 3
    assert done.exception_class_path == "" and done.traceback == ""
    result.refresh()
    assert result.status.name == "SUCCESSFUL" and result.return_value == 3
    assert [r["attempt"] for r in sup.events(events.RETRY_SCHEDULED, task_id=str(result.id))] == [1, 2]
    assert not sup.has_event(events.RETRY_EXHAUSTED)


def test_a_task_that_always_fails_stops_after_max_attempts_with_growing_delays(supervisor, db, tmp_path):
    from tsapp import tasks

    policy = retries(
        "tsapp.tasks.always_fails", 'max_attempts = 3\ndelay = "500ms"\nbackoff = "exponential"\njitter = false'
    )
    sup = supervisor(config_toml(ONE_POOL + policy))
    attempts = tmp_path / "attempts"
    result = tasks.always_fails.enqueue(str(attempts))
    wait_until(lambda: attempts.exists() and len(attempts.read_text().split()) == 3, 30, message="3 attempts")
    sup.wait_event(events.RETRY_EXHAUSTED, task_id=str(result.id), attempt=3)
    failed = row(result)
    assert failed.status == "FAILED" and len(failed.worker_ids) == 3
    assert failed.exception_class_path == "builtins.ConnectionError"
    assert "always fails" in failed.traceback
    times = [float(t) for t in attempts.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0, gaps  # 500ms, then doubled


def test_an_exception_not_listed_is_not_retried(supervisor, db, tmp_path):
    from tsapp import tasks

    policy = retries("tsapp.tasks.flaky", 'max_attempts = 3\ndelay = "100ms"\non = ["ConnectionError"]')
    supervisor(config_toml(ONE_POOL + policy))
    result = tasks.flaky.enqueue(str(tmp_path / "count"), 5, "ValueError")
    failed = wait_finished(result)
    assert failed.exception_class_path == "builtins.ValueError"
    assert len(failed.worker_ids) == 1


@pytest.mark.parametrize("db", ["sqlite", "postgres", "mariadb-rr"], indirect=True)
def test_a_lost_worker_is_an_attempt_a_policy_can_name(supervisor, db, tmp_path):
    from tsapp import tasks

    pool = (
        ONE_POOL + '\n[pools.default.retries]\nmax_attempts = 2\ndelay = "100ms"\non = ["task_supervisor.WorkerLost"]\n'
    )
    sup = supervisor(config_toml(pool))
    failed = wait_finished(tasks.exit_process.enqueue(3))
    assert failed.exception_class_path == LOST_CLASS
    assert len(failed.worker_ids) == 2
    assert "That was its last attempt (2 of max_attempts 2)" in failed.traceback
    assert sup.has_event(events.RETRY_SCHEDULED, task_id=str(failed.id), attempt=1)
    assert sup.has_event(events.RETRY_EXHAUSTED, task_id=str(failed.id), attempt=2)


def test_check_reports_bad_retry_policies(tmp_path, db):
    text = config_toml(ONE_POOL + retries("tsapp.tasks.nope", 'on = ["NotAnError"]'))
    path = tmp_path / "config.toml"
    path.write_text(text)
    import os

    result = subprocess.run(
        [sys.executable, "-m", "task_supervisor", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **db.env},
    )
    assert result.returncode == exitcodes.EX_CHECK_FAILED
    assert 'retries."tsapp.tasks.nope": the task does not import' in result.stderr
    assert "entry 'NotAnError' is not an exception class" in result.stderr


def test_the_admin_shows_attempts_and_the_next_retry(supervisor, db, tmp_path):
    from django.contrib.auth.models import User
    from django.test import Client
    from tsapp import tasks

    policy = retries("tsapp.tasks.always_fails", 'max_attempts = 2\ndelay = "1h"\njitter = false')
    supervisor(config_toml(ONE_POOL + policy))
    result = tasks.always_fails.enqueue(str(tmp_path / "attempts"))
    wait_until(lambda: row(result).status == "READY" and len(row(result).worker_ids) == 1, 30, message="a retry")
    admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/task_supervisor/taskattempts/").content.decode()
    assert str(result.id) in page and "builtins.ConnectionError" in page
    assert str(row(result).run_after.year) in page  # the next attempt's time, an hour away
