"""task_supervisor.ops on SQLite and PostgreSQL, in-process: what each action changes, what it
records, and the one-line errors for bad input (with nothing changed)."""

from __future__ import annotations

import uuid

import pytest
from django.test import override_settings

from task_supervisor import ops
from task_supervisor.config import RetentionConfig

KNOWN = {"default", "reports"}


def rows(**filters):
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(**filters)


def running(result, worker="n1:default:000:1"):
    rows(id=result.id).update(status="RUNNING", worker_ids=[worker])


def failed(result, exception="builtins.ValueError"):
    from django.utils import timezone

    rows(id=result.id).update(
        status="FAILED", worker_ids=["n1:default:000:1"], exception_class_path=exception, finished_at=timezone.now()
    )


def test_cancel_ready_and_running_and_finished(db):
    from tsapp import tasks

    from task_supervisor.models import Action, CancelRequest

    ready, busy, done = tasks.noop.enqueue(), tasks.noop.enqueue(), tasks.noop.enqueue()
    running(busy)
    rows(id=done.id).update(status="SUCCESSFUL")
    out = ops.cancel([str(ready.id), str(busy.id)], actor="alice")
    assert out.count == 2
    row = rows(id=ready.id).get()
    assert row.status == "FAILED" and row.exception_class_path == "task_supervisor.TaskCancelled"
    assert "alice" in row.traceback
    request = CancelRequest.objects.get()
    assert request.task_id == str(busy.id) and request.worker_id == "n1:default:000:1"
    assert rows(id=busy.id).get().status == "RUNNING"  # its own node stops it
    finished = ops.cancel([str(done.id)], actor="alice")
    assert finished.count == 0 and "already finished" in finished.message
    assert rows(id=done.id).get().status == "SUCCESSFUL"
    assert [a.verb for a in Action.objects.all()] == ["cancel"]
    assert Action.objects.get().actor == "alice" and Action.objects.get().rows == 2


def test_cancel_by_filter_with_dry_run_and_batches(db, monkeypatch):
    from tsapp import tasks

    monkeypatch.setattr(ops, "BATCH", 7)
    for n in range(20):
        tasks.report.enqueue(n)
    tasks.noop.enqueue()
    dry = ops.cancel(queue="reports", dry_run=True, known_queues=KNOWN)
    assert dry.count == 20 and dry.dry_run
    assert rows(status="READY").count() == 21
    out = ops.cancel(queue="reports", known_queues=KNOWN)
    assert out.count == 20
    assert rows(status="FAILED", queue_name="reports").count() == 20
    assert rows(status="READY").count() == 1


@pytest.mark.parametrize(
    ("call", "expect"),
    [
        (lambda: ops.cancel(["nope"]), "not a task id"),
        (lambda: ops.cancel([str(uuid.uuid4())]), "no such task"),
        (lambda: ops.cancel(queue="reprots", known_queues=KNOWN), "Did you mean 'reports'"),
        (lambda: ops.cancel(task="tsapp.tasks.nothing_like_it"), "No task matches"),
        (lambda: ops.cancel(), "Give task ids"),
        (lambda: ops.cancel(queue="default", status="SUCCESSFUL"), "Cannot cancel SUCCESSFUL"),
        (lambda: ops.pause(["defualt"], known_queues=KNOWN), "Did you mean 'default'"),
        (lambda: ops.retry(task="tsapp.tasks.noop"), "No FAILED task"),
        (lambda: ops.run_schedule("nightly"), "Unknown schedule"),
        (lambda: ops.cancel(queue="default", backend="nope"), "nope"),
    ],
)
def test_bad_input_is_one_sentence_and_changes_nothing(db, call, expect):
    from tsapp import tasks

    from task_supervisor.models import Action, QueuePause

    tasks.noop.enqueue()
    with pytest.raises(ops.OperationError, match=expect) as info:
        call()
    assert "\n" not in str(info.value)
    assert rows(status="READY").count() == 1
    assert not Action.objects.exists() and not QueuePause.objects.exists()


def test_an_id_of_another_backend_is_refused(db):
    from tsapp import tasks

    result = tasks.noop.enqueue()
    rows(id=result.id).update(backend_name="other")
    with pytest.raises(ops.OperationError, match="belongs to backend 'other'"):
        ops.cancel([str(result.id)])
    assert rows(id=result.id).get().status == "READY"


def test_pause_resume_and_queues(db):
    from tsapp import tasks

    tasks.report.enqueue(1)
    tasks.report.enqueue(2)
    out = ops.pause(["reports"], actor="bob", known_queues=KNOWN)
    assert out.count == 1
    again = ops.pause(["reports"], actor="carol", known_queues=KNOWN)
    assert again.count == 0 and "Already paused" in again.message
    listing = {r["queue"]: r for r in ops.queues(known_queues=KNOWN).rows}
    assert listing["reports"]["paused"] and listing["reports"]["paused_by"] == "bob"
    assert listing["reports"]["ready"] == 2 and listing["reports"]["oldest_ready_age"] >= 0
    assert listing["default"] == {**listing["default"], "ready": 0, "paused": False}
    assert ops.resume(["reports"], known_queues=KNOWN).count == 1
    assert not ops.queues(known_queues=KNOWN).rows[1]["paused"]
    assert ops.resume(["reports"], known_queues=KNOWN).count == 0


def test_retry_on_the_same_row_and_as_new(db):
    from tsapp import tasks

    first, second = tasks.add.enqueue(1, 2), tasks.add.enqueue(3, 4)
    failed(first)
    failed(second)
    with pytest.raises(ops.OperationError, match="only FAILED"):
        ops.retry([str(first.id), str(tasks.noop.enqueue().id)])
    assert rows(id=first.id).get().status == "FAILED"
    out = ops.retry([str(first.id)], actor="dan")
    assert out.count == 1
    row = rows(id=first.id).get()
    assert row.status == "READY" and row.worker_ids == ["n1:default:000:1"]  # attempts go on counting
    assert rows().ready().filter(id=first.id).exists()
    new = ops.retry([str(second.id)], as_new=True)
    assert new.count == 1 and new.rows[0]["from"] == str(second.id)
    fresh = rows(id=new.rows[0]["id"]).get()
    assert fresh.status == "READY" and fresh.args_kwargs == {"args": [3, 4], "kwargs": {}}
    assert rows(id=second.id).get().status == "FAILED"


def test_prune_counts_then_deletes_only_finished_rows(db, monkeypatch):
    import datetime as dt

    from django.utils import timezone
    from tsapp import tasks

    from task_supervisor.chores import retention

    monkeypatch.setattr(retention, "BATCH", 3)
    old = timezone.now() - dt.timedelta(days=10)
    for n in range(8):
        result = tasks.noop.enqueue()
        rows(id=result.id).update(status="SUCCESSFUL" if n < 5 else "FAILED", finished_at=old)
    keep = [tasks.noop.enqueue(), tasks.noop.enqueue()]
    running(keep[1])
    rows(id=keep[0].id).update(finished_at=old)  # READY, however old: never pruned
    policy = RetentionConfig(successful=7 * 86400, failed=30 * 86400)
    dry = ops.prune(policy, dry_run=True)
    assert {r["kind"]: r["rows"] for r in dry.rows} == {"successful": 5, "failed": 0, "schedule_runs": 0}
    assert rows().count() == 10
    out = ops.prune(policy)
    assert out.count == 5
    assert rows().count() == 5 and not rows(status="SUCCESSFUL").exists()
    with pytest.raises(ops.OperationError, match="retention"):
        ops.prune(RetentionConfig())


def test_retention_lease_has_one_holder(db):
    from task_supervisor import compat
    from task_supervisor.chores import retention

    backend = compat.resolve("default")
    assert retention.take_lease(backend, "a")
    assert not retention.take_lease(backend, "b")
    assert retention.take_lease(backend, "a")  # renewed
    retention.release_lease(backend, "a")
    assert retention.take_lease(backend, "b")


SCHEDULES = {"tick": {"task": "tsapp.tasks.noop", "cron": "0 3 * * *"}}


def test_schedules_run_now_disable_and_enable(db):
    from task_supervisor.models import ScheduleOverride, ScheduleRun

    with override_settings(PERIODIC_TASKS=SCHEDULES):
        out = ops.run_schedule("tick", actor="eve")
        run = ScheduleRun.objects.get()
        assert run.manual and run.task_result_id == out.rows[0]["id"]
        assert rows(id=out.rows[0]["id"]).get().task_path == "tsapp.tasks.noop"
        with pytest.raises(ops.OperationError, match="Did you mean 'tick'"):
            ops.set_schedule_enabled("tock", False)
        ops.set_schedule_enabled("tick", False)
        assert ScheduleOverride.objects.get().enabled is False
        ops.set_schedule_enabled("tick", True)  # what settings say: the override is cleared
        assert not ScheduleOverride.objects.exists()
    assert [a["verb"] for a in ops.actions().rows] == ["schedule_enable", "schedule_disable", "schedule_run"]


def test_retention_config_keys():
    from pathlib import Path

    from task_supervisor.config import ConfigError, config_from_dict

    base = {"django": {"settings": "s"}, "supervisor": {"node": "n"}}
    config = config_from_dict({**base, "retention": {"successful": "7d", "failed": 3600}}, Path("c.toml"))
    assert config.retention == RetentionConfig(successful=7 * 86400.0, failed=3600.0)
    assert config.retention.enabled and not config_from_dict(base, Path("c.toml")).retention.enabled
    with pytest.raises(ConfigError, match=r"Unknown key retention.sucessful; did you mean retention.successful\?"):
        config_from_dict({**base, "retention": {"sucessful": "7d"}}, Path("c.toml"))
    with pytest.raises(ConfigError, match=r"retention\.failed must be a duration"):
        config_from_dict({**base, "retention": {"failed": "soon"}}, Path("c.toml"))


def test_a_cancelled_task_whose_worker_is_lost_is_recorded_cancelled_not_requeued(db):
    import time
    from pathlib import Path

    from tsapp import tasks

    from task_supervisor import compat
    from task_supervisor.chores.janitor import Janitor
    from task_supervisor.chores.recovery import LostTask
    from task_supervisor.config import config_from_dict

    config = config_from_dict(
        {
            "django": {"settings": "s"},
            "supervisor": {"node": "n1"},
            "pools": {"default": {"on_worker_lost": "requeue"}},
        },
        Path("c.toml"),
    )
    janitor = Janitor(config, {"default": compat.resolve("default")}, time.monotonic)
    cancelled, other = tasks.noop.enqueue(), tasks.noop.enqueue()
    running(cancelled, "n1:default:000:1")
    running(other, "n1:default:001:1")
    ops.cancel([str(cancelled.id)])
    for worker in ("n1:default:000:1", "n1:default:001:1"):
        janitor.lost("default", LostTask(worker, None, "The worker died.", on_worker_lost="requeue"))
    janitor._finish_pending()
    row = rows(id=cancelled.id).get()
    assert row.status == "FAILED" and row.exception_class_path == "task_supervisor.TaskCancelled"
    assert "It had been cancelled." in row.traceback
    assert rows(id=other.id).get().status == "READY"  # not cancelled: requeued as the pool says


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_on_sqlite_an_action_waits_for_a_busy_writer_instead_of_failing(db):
    """A worker holding SQLite's write lock: pause, cancel and a schedule switch wait for it
    (BEGIN IMMEDIATE within the busy timeout); a read turned into a write would fail at once."""
    import sqlite3
    import threading
    import time

    from tsapp import tasks

    running(task := tasks.noop.enqueue())
    writer = sqlite3.connect(db.name, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # what a claiming or finishing worker holds for a moment
    writer.execute("UPDATE task_supervisor_queuepause SET paused_by = paused_by")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.5)
        writer.execute("COMMIT")
        released.set()

    threading.Thread(target=release, daemon=True).start()
    began = time.monotonic()
    outcome = ops.pause(["reports"], actor="tester", known_queues=KNOWN)
    assert outcome.count == 1 and released.is_set() and time.monotonic() - began >= 0.4
    writer.execute("BEGIN IMMEDIATE")
    threading.Thread(target=release, daemon=True).start()
    assert ops.cancel([str(task.id)], actor="tester").count == 1
    writer.close()


def test_a_database_error_in_a_command_is_one_line_and_exit_5(monkeypatch, capsys, django_ready):
    import argparse

    from django.db import OperationalError

    from task_supervisor import exitcodes, opscli

    def action(config):
        raise OperationalError("database is locked\n  (while pausing)")

    monkeypatch.setattr(opscli, "_setup", lambda args: None)
    code = opscli._run(argparse.Namespace(json=False), action)
    assert code == exitcodes.EX_DATABASE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("task-supervisor: The database failed the command: database is locked (while pausing).")
    assert "safe to run again" in line
