"""The fence around a worker's final write, against real rows on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from typing import Any

import pytest

from task_supervisor import events
from task_supervisor.observe.exposition import Metrics
from task_supervisor.observe.stats import Stats
from task_supervisor.wire import protocol
from task_supervisor.worker import fastpath, fence
from tests.conftest import fresh_database
from tests.support import pg_connect, use_database, wait_until


# MariaDB too: the fence's conditional UPDATE compares a JSON column and a DATETIME(6).
@pytest.fixture(params=["sqlite", "postgres", "mariadb", "mariadb-rr"])
def db(request: pytest.FixtureRequest, databases: Any, django_ready: None) -> Any:
    yield from fresh_database(request.param, databases)


ME = "testnode:default:0:1"
OTHER = "othernode:default:0:1"


class Sent:
    """A reporter that keeps what the child would send."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, event: str, **fields: Any) -> None:
        self.messages.append({"event": event, **fields})


@pytest.fixture
def backend(db):
    from task_supervisor import compat

    return compat.resolve("default")


def install(backend: Any, worker_id: str, reporter: Any, *args: Any) -> None:
    """As a child installs it: on PostgreSQL, writing through the precompiled conditional UPDATE."""
    updates = fastpath.Updates(backend.model) if fastpath.supported(backend.db_alias) else None
    fence.install(backend, worker_id, reporter, *args, updates=updates)


@pytest.fixture
def sent(backend):
    reporter = Sent()
    install(backend, ME, reporter, "default", 0)
    yield reporter
    fence.uninstall(backend.model)


def claimed(backend, task=None, *args: Any, worker_id: str = ME) -> Any:
    """A row claimed by ``worker_id``, as db_worker holds it while the task runs."""
    from tsapp import tasks

    result = (task or tasks.add).enqueue(*(args or (1, 2)))
    row = backend.model.objects.get(id=result.id)
    row.claim(worker_id)
    return row


def stored(row: Any) -> Any:
    return type(row).objects.get(id=row.id)


def fenced_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == events.TASK_FENCED]


def test_the_owner_writes_its_result(backend, sent):
    row = claimed(backend)
    row.set_successful(3)
    assert (stored(row).status, stored(row).return_value) == ("SUCCESSFUL", 3)
    assert sent.messages == []


def test_the_owner_writes_its_failure(backend, sent):
    row = claimed(backend)
    row.set_failed(ValueError("boom"))
    failed = stored(row)
    assert failed.status == "FAILED" and failed.exception_class_path == "builtins.ValueError"
    assert "boom" in failed.traceback
    assert sent.messages == []


def test_a_row_put_back_to_ready_keeps_what_it_was_given(backend, sent, caplog):
    from django.utils import timezone

    row = claimed(backend)
    later = timezone.now() + timedelta(hours=1)
    type(row).objects.filter(id=row.id).update(status="READY", run_after=later)
    with caplog.at_level(logging.WARNING, logger="task_supervisor.worker"):
        row.set_successful(3)  # raises nothing
    kept = stored(row)
    assert (kept.status, kept.run_after, kept.return_value, kept.finished_at) == ("READY", later, None, None)
    assert kept.worker_ids == [ME]
    assert sent.messages == [{"event": "task_fenced", "task_id": str(row.id), "owner": ME, "status": "READY"}]
    [record] = fenced_records(caplog)
    assert (record.task_id, record.status, record.owner, record.pool) == (str(row.id), "READY", ME, "default")
    # The worker's copy is as before: the task_finished that follows says RUNNING, not SUCCESSFUL.
    assert row.status == "RUNNING" and row.return_value is None and row.finished_at is None


def test_a_row_failed_by_someone_else_keeps_its_failure(backend, sent):
    from django.utils import timezone

    row = claimed(backend)
    when = timezone.now()
    type(row).objects.filter(id=row.id).update(
        status="FAILED", finished_at=when, exception_class_path="task_supervisor.WorkerLost", traceback="taken"
    )
    row.set_failed(ValueError("late"))
    kept = stored(row)
    assert (kept.status, kept.finished_at, kept.exception_class_path, kept.traceback) == (
        "FAILED",
        when,
        "task_supervisor.WorkerLost",
        "taken",
    )
    assert sent.messages[0]["status"] == "FAILED"
    assert row.status == "RUNNING" and row.exception_class_path == ""


def test_a_row_claimed_again_by_another_worker_is_not_overwritten(backend, sent):
    row = claimed(backend)
    again = stored(row)
    type(row).objects.filter(id=row.id).update(status="READY")
    again.status = "READY"
    again.claim(OTHER)
    row.set_successful(3)
    kept = stored(row)
    assert kept.status == "RUNNING" and kept.worker_ids == [ME, OTHER] and kept.return_value is None
    assert sent.messages == [{"event": "task_fenced", "task_id": str(row.id), "owner": OTHER, "status": "RUNNING"}]
    install(backend, OTHER, Sent())  # the new owner, as its own process would
    again.set_successful(4)
    assert stored(row).status == "SUCCESSFUL" and stored(row).return_value == 4


def test_the_same_worker_id_earlier_in_the_list_is_not_the_owner(backend, sent):
    row = claimed(backend)
    type(row).objects.filter(id=row.id).update(worker_ids=[ME, OTHER, ME + "x"])
    row.set_successful(3)
    assert stored(row).status == "RUNNING"
    assert sent.messages[0]["owner"] == ME + "x"


def test_a_deleted_row_is_not_written(backend, sent):
    row = claimed(backend)
    type(row).objects.filter(id=row.id).delete()
    row.set_successful(3)
    assert not type(row).objects.filter(id=row.id).exists()
    assert sent.messages == [{"event": "task_fenced", "task_id": str(row.id), "owner": None, "status": None}]


def test_a_save_that_fails_still_raises_and_writes_nothing(backend, sent):
    row = claimed(backend)
    with pytest.raises(TypeError):
        row.set_successful(object())  # JSON cannot hold it: db_worker then records the failure
    assert stored(row).status == "RUNNING"
    row.set_failed(TypeError("not JSON"))
    assert stored(row).status == "FAILED"
    assert sent.messages == []


def test_installing_again_replaces_the_fence_and_uninstall_restores(backend, sent):
    model = backend.model
    wrapped = model.set_successful
    install(backend, OTHER, Sent())
    assert model.set_successful.task_supervisor_unfenced is wrapped.task_supervisor_unfenced
    fence.uninstall(model)
    assert not hasattr(model.set_successful, "task_supervisor_unfenced")


def test_db_worker_goes_on_after_a_fenced_finish(backend, tmp_path):
    """db_worker's own run_task: no exception, task_finished says RUNNING, the wire says task_fenced."""
    from django_tasks_db.management.commands.db_worker import Worker

    read_fd, write_fd = os.pipe()
    install(backend, ME, protocol.Reporter(write_fd))
    finished: list[str] = []

    def on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        finished.append(str(getattr(task_result.status, "value", task_result.status)))

    backend.signals.task_finished.connect(on_finished, weak=False, dispatch_uid="test_fence_finished")
    try:
        worker = Worker(
            queue_names=["default"],
            interval=0,
            batch=True,
            backend_name="default",
            startup_delay=False,
            max_tasks=None,
            worker_id=ME,
            excluded_queue_names=[],
        )
        for task_args, status in (((1, 2), "READY"), (("x", 2), "FAILED")):  # add("x", 2) raises
            row = claimed(backend, None, *task_args)
            type(row).objects.filter(id=row.id).update(status=status)
            worker.run_task(row)
            assert stored(row).status == status
        assert finished == ["RUNNING", "RUNNING"]
        assert worker._run_tasks == 2
    finally:
        backend.signals.task_finished.disconnect(dispatch_uid="test_fence_finished")
        fence.uninstall(backend.model)
        os.close(write_fd)
    messages = protocol.Reader(read_fd).feed(os.read(read_fd, 65536))
    os.close(read_fd)
    assert [(m["event"], m["status"], m["owner"]) for m in messages] == [
        ("task_fenced", "READY", ME),
        ("task_fenced", "FAILED", ME),
    ]


def lock_waits(name: str) -> int:
    with pg_connect() as watch:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
        return int(watch.execute(query, [name]).fetchone()[0])


def write_then_close(row: Any) -> None:
    from django.db import connections

    try:
        row.set_successful(3)
    finally:
        connections.close_all()


@pytest.fixture
def pg_backend(databases, django_ready):
    from django.db import connections

    from task_supervisor import compat

    database = databases.create("postgres")
    use_database(database)
    yield database, compat.resolve("default")
    connections.close_all()
    databases.drop(database)


def test_on_postgresql_the_fence_waits_for_a_writer_holding_the_row_and_sees_its_verdict(pg_backend):
    """The check and the write share one transaction: a recovery committing meanwhile wins."""
    database, backend = pg_backend
    sent = Sent()
    install(backend, ME, sent)
    try:
        row = claimed(backend)
        table = backend.model._meta.db_table
        with pg_connect(database.name) as other:
            other.execute("BEGIN")
            other.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [row.id])
            other.execute(f"UPDATE {table} SET status = 'FAILED' WHERE id = %s", [row.id])
            writer = threading.Thread(target=write_then_close, args=(row,))
            writer.start()
            wait_until(lambda: lock_waits(database.name) == 1, message="the fenced write to wait for the row lock")
            other.execute("COMMIT")
            writer.join(10)
        assert not writer.is_alive()
        assert stored(row).status == "FAILED"
        assert sent.messages == [{"event": "task_fenced", "task_id": str(row.id), "owner": ME, "status": "FAILED"}]
    finally:
        fence.uninstall(backend.model)


def test_fenced_writes_are_a_prometheus_counter_per_pool():
    stats = Stats()
    stats.fenced_writes["default"] += 2
    snapshot = {"version": "1", "node": "n", "uptime": 1.0, "pools": [], "database": {"ok": True}}
    body = Metrics(lambda: snapshot, stats).response().body.decode()
    assert 'task_supervisor_fenced_writes_total{pool="default"} 2.0' in body
