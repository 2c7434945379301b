"""Sentry, when the project initialises it: a task that fails in a child, one whose worker is
lost, and one killed at its hard timeout are each reported once, with their tags; events go to a
local transport that writes them to a file (tests/project/tsproject/settings_sentry.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, config_toml, wait_until

POOL = """
[pools.default]
processes = 2
timeout = "1s"
kill_after = "1s"
"""


def events_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_failed_lost_and_timed_out_tasks_are_reported_once_with_their_tags(supervisor, db, tmp_path):
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks

    out = tmp_path / "sentry.jsonl"
    text = config_toml(POOL).replace('settings = "tsproject.settings"', 'settings = "tsproject.settings_sentry"')
    supervisor(text, TS_SENTRY_EVENTS=str(out))
    failed = tasks.fail.enqueue("boom from the task")
    lost = tasks.exit_process.enqueue(3)
    stubborn = tasks.stubborn.enqueue(60)
    ids = {str(failed.id): "fail", str(lost.id): "lost", str(stubborn.id): "timeout"}

    def reported() -> dict[str, list[dict]]:
        by_task: dict[str, list[dict]] = {}
        for event in events_in(out):
            by_task.setdefault(event["tags"].get("task_id", ""), []).append(event)
        return by_task if set(ids) <= set(by_task) else {}

    by_task = wait_until(reported, timeout=60, message=lambda: f"events {events_in(out)}")
    rows = {str(r.id): r for r in DBTaskResult.objects.filter(id__in=list(ids))}
    assert {r.status for r in rows.values()} == {"FAILED"}
    for task_id, kind in ids.items():
        (event,) = by_task[task_id]  # once
        tags = event["tags"]
        assert tags["queue"] == "default" and tags["attempt"] == "1", (kind, tags)
        assert tags["worker_id"] == rows[task_id].worker_ids[-1], (kind, tags)
        assert tags["exception"] == rows[task_id].exception_class_path, (kind, tags)
    assert by_task[str(failed.id)][0]["tags"]["task_path"] == "tsapp.tasks.fail"
    assert by_task[str(failed.id)][0]["exception"] == "ValueError" and by_task[str(failed.id)][0]["frames"] > 0
    assert by_task[str(lost.id)][0]["tags"]["exception"] == "task_supervisor.WorkerLost"
    assert by_task[str(stubborn.id)][0]["tags"]["exception"] == "task_supervisor.TaskTimeout"
    assert by_task[str(lost.id)][0]["tags"]["outcome"] == "failed"
    # No other event repeats a task's failure (the framework's and the janitor's ERROR lines).
    loggers = ("django.tasks", "task_supervisor.loop.arbiter", "task_supervisor.chores.janitor")
    repeats = [e for e in by_task.get("", []) if e["logger"] in loggers and str(e["message"]).startswith("Task ")]
    assert repeats == []


def test_without_sentry_nothing_imports_it():
    code = (
        "import sys\n"
        "from task_supervisor import sentry, bootstrap\n"
        "from task_supervisor.chores import outcomes\n"
        "from task_supervisor.worker import failures\n"
        "sentry.report(task_id='t', path='p', queue='q', attempt=1, worker_id='w', exception_path='e')\n"
        "sentry.quiesce()\n"
        "assert sentry.install() is False and failures.hook(None, None) is False\n"
        "assert 'sentry_sdk' not in sys.modules, 'sentry_sdk was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
