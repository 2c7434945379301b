"""Fenced writes with real processes: a row taken from its worker mid-task keeps what it was given.

The row of a running task is set READY (for later) or FAILED directly in the database, as a
recovery on another node or an operator would; then the task finishes. The worker's finish
writes nothing, the child goes on to its next task, and the supervisor's log has ``task_fenced``.
Setups (b) and (c) run the same in their own venvs.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import textwrap
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from task_supervisor import exitcodes
from tests.chaos.harness import metric
from tests.realproc.test_observe import free_port, get
from tests.realproc.test_setups import GUIDE, TABLE, Setup, venv
from tests.realproc.test_supervision import ONE_POOL, rows, wait_status
from tests.support import PROJECT, config_toml, pg_connect, wait_until

HOLD = "tsapp.tasks.hold"
# A retry policy that matches any failure: had the supervisor been told FAILED for a fenced
# finish, it would put the row its new owner failed back to READY.
RETRY_ANY = f'\n[retries."{HOLD}"]\nmax_attempts = 3\ndelay = "100ms"\n'


def json_records(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a traceback or a line not written through logging
        if isinstance(record, dict):
            found.append(record)
    return found


def fenced(log: str, task_id: str) -> list[dict[str, Any]]:
    return [r for r in json_records(log) if r.get("event") == "task_fenced" and r.get("task_id") == task_id]


def wait_fenced(log: Callable[[], str], task_id: str) -> dict[str, Any]:
    """The one task_fenced record of ``task_id``, once the log has it."""
    [record] = wait_until(
        lambda: fenced(log(), task_id), 30, message=lambda: f"task_fenced of {task_id} in\n{log()[-3000:]}"
    )
    return record


class Held:
    """A ``hold`` task: started (its marker written), waiting until released."""

    def __init__(self, tmp_path: Path, name: str = "held") -> None:
        self.marker, self.release = tmp_path / f"{name}.started", tmp_path / f"{name}.release"

    def args(self) -> tuple[str, str]:
        return str(self.marker), str(self.release)

    def wait_started(self, log: Callable[[], str]) -> None:
        wait_until(self.marker.exists, 30, message=lambda: f"the task to start; the log ends:\n{log()[-3000:]}")

    def finish(self, how: str = "return") -> None:
        self.release.write_text("fail" if how == "raise" else "ok")


@pytest.fixture
def observed_supervisor(supervisor):
    def start() -> tuple[Any, int]:
        port = free_port()
        text = config_toml(ONE_POOL + RETRY_ANY, extra='log_format = "json"')
        sup = supervisor(text.replace('http = ""', f'http = "127.0.0.1:{port}"'))
        return sup, port

    return start


def finished_metrics(port: int) -> str:
    """The metrics once the supervisor has heard the fenced task's task_finished."""
    return wait_until(
        lambda: (
            (body := get(port, "/metrics")[1].decode())
            and metric(body, "task_supervisor_tasks_finished_total", pool="default", status="RUNNING") == 1
            and body
        ),
        message="tasks_finished{status=RUNNING} 1",
    )


def test_a_row_put_back_to_ready_keeps_it_and_the_worker_goes_on(observed_supervisor, db, tmp_path):
    from django.utils import timezone
    from tsapp import tasks

    sup, port = observed_supervisor()
    held = Held(tmp_path)
    result = tasks.hold.enqueue(*held.args())
    held.wait_started(sup.log)
    [worker_id] = rows().get(id=result.id).worker_ids
    later = timezone.now() + timedelta(hours=1)
    assert rows().filter(id=result.id, status="RUNNING").update(status="READY", run_after=later) == 1
    held.finish("return")
    record = wait_fenced(sup.log, str(result.id))
    assert record["status"] == "READY" and worker_id in record["message"]
    kept = rows().get(id=result.id)
    assert (kept.status, kept.run_after, kept.worker_ids) == ("READY", later, [worker_id])
    assert (kept.return_value, kept.finished_at) == (None, None)
    body = finished_metrics(port)
    assert metric(body, "task_supervisor_tasks_finished_total", pool="default", status="SUCCESSFUL") == 0
    # db_worker went on: the same child runs the next task.
    after = tasks.add.enqueue(1, 2)
    wait_status(after, "SUCCESSFUL")
    assert rows().get(id=after.id).worker_ids == [worker_id]
    assert "child_crashed" not in sup.log()


def test_a_row_failed_by_hand_keeps_its_failure_and_is_not_retried(observed_supervisor, db, tmp_path):
    from django.utils import timezone
    from tsapp import tasks

    sup, port = observed_supervisor()
    held = Held(tmp_path)
    result = tasks.hold.enqueue(*held.args())
    held.wait_started(sup.log)
    [worker_id] = rows().get(id=result.id).worker_ids
    when = timezone.now()
    taken = {"finished_at": when, "exception_class_path": "operator.TookIt", "traceback": "taken by hand"}
    assert rows().filter(id=result.id, status="RUNNING").update(status="FAILED", **taken) == 1
    held.finish("raise")  # db_worker's set_failed, fenced
    record = wait_fenced(sup.log, str(result.id))
    assert record["status"] == "FAILED"
    body = finished_metrics(port)
    assert metric(body, "task_supervisor_tasks_finished_total", pool="default", status="FAILED") == 0
    after = tasks.add.enqueue(2, 2)
    wait_status(after, "SUCCESSFUL")  # the supervisor turned since: a retry would have been queued by now
    kept = rows().get(id=result.id)
    assert (kept.status, kept.worker_ids) == ("FAILED", [worker_id])
    assert (kept.finished_at, kept.exception_class_path, kept.traceback) == (when, "operator.TookIt", "taken by hand")
    assert "retrying at" not in sup.log()


def test_the_supervisor_counts_fenced_writes(observed_supervisor, db, tmp_path):
    from tsapp import tasks

    sup, port = observed_supervisor()
    held = Held(tmp_path)
    result = tasks.hold.enqueue(*held.args())
    held.wait_started(sup.log)
    rows().filter(id=result.id).update(status="FAILED")
    held.finish("return")
    body = finished_metrics(port)
    assert metric(body, "task_supervisor_fenced_writes_total", pool="default") == 1


# -- the older setups, each in its own venv ----------------------------------------------------

COMPAT_TASKS = """\
import os
import time
from pathlib import Path

from django_tasks import task


@task()
def hold(marker, release, timeout=60.0):
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(release)
        time.sleep(0.02)
    if Path(release).read_text() == "fail":
        raise ValueError("told to fail")
    return "held"
"""


class FencingSetup(Setup):
    """A compat setup with one child, JSON logs, and rows taken by SQL."""

    table = TABLE  # django-tasks-db kept the table of django-tasks' database backend
    task_module: str

    def start(self) -> None:
        config = self.workdir / "config.toml"
        config.write_text(
            textwrap.dedent(f"""\
            [django]
            settings = "{self.settings}"
            pythonpath = ["{self.project}"]
            [supervisor]
            node = "compat"
            http = ""
            log_format = "json"
            [pools.default]
            processes = 1
            interval = "100ms"
            """)
        )
        self.log = open(self.workdir / "supervisor.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "task-supervisor"), "run", "-c", str(config)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def key(self, task_id: str) -> str:
        """The id as the column holds it: SQLite stores a UUID as 32 hex digits, PostgreSQL as uuid."""
        return uuid.UUID(task_id).hex if self.engine == "sqlite" else task_id

    def execute(self, sql: str, task_id: str) -> int:
        if self.engine == "sqlite":
            with sqlite3.connect(self.name) as conn:
                return conn.execute(sql.replace("%s", "?"), [self.key(task_id)]).rowcount
        with pg_connect(self.name) as conn:
            return conn.execute(sql, [self.key(task_id)]).rowcount

    def row(self, task_id: str) -> tuple[str, list[str], str, str]:
        query = f"SELECT status, worker_ids, exception_class_path, traceback FROM {self.table} WHERE id = %s"
        if self.engine == "sqlite":
            with sqlite3.connect(self.name) as conn:
                status, workers, path, text = conn.execute(query.replace("%s", "?"), [self.key(task_id)]).fetchone()
            return status, json.loads(workers), path, text
        with pg_connect(self.name) as conn:
            return conn.execute(query, [self.key(task_id)]).fetchone()

    def log_text(self) -> str:
        return (self.workdir / "supervisor.log").read_text(errors="replace")


SETUPS = {  # project, settings, the module of its hold task
    "b": (PROJECT, "tsproject.settings", "tsapp.tasks"),
    "c": (GUIDE, "guide.settings", "fencetasks"),
}


@pytest.fixture
def fencing_setup(tmp_path):
    made: list[FencingSetup] = []

    def make(name: str, engine: str) -> FencingSetup:
        project, settings, task_module = SETUPS[name]
        setup = FencingSetup(venv(name), project, settings, engine, tmp_path)
        setup.task_module = task_module
        extra = tmp_path / "extra"
        extra.mkdir()
        (extra / "fencetasks.py").write_text(COMPAT_TASKS)
        setup.env["PYTHONPATH"] = f"{project}:{extra}"
        made.append(setup)
        setup.create()
        return setup

    yield make
    for setup in made:
        setup.cleanup()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
@pytest.mark.parametrize("name", ["b", "c"])
def test_older_setups_fence_finishes_on_rows_failed_by_hand(fencing_setup, tmp_path, name, engine):
    """Both finishing methods of each backend: a task that returns, then one that raises."""
    setup = fencing_setup(name, engine)
    setup.start()
    workers = set()
    for how in ("return", "raise"):
        held = Held(tmp_path, how)
        [task_id] = setup.enqueue(
            f"import json; from {setup.task_module} import hold; "
            f"print(json.dumps([str(hold.enqueue({held.args()[0]!r}, {held.args()[1]!r}).id)]))"
        )
        held.wait_started(setup.log_text)
        status, [worker_id], _, _ = setup.row(task_id)
        workers.add(worker_id)
        assert status == "RUNNING" and worker_id.startswith("compat:default:0:") and len(workers) == 1  # same child
        taken = (
            f"UPDATE {setup.table} SET status = 'FAILED', exception_class_path = 'operator.TookIt', "
            "traceback = 'taken by hand' WHERE id = %s AND status = 'RUNNING'"
        )
        assert setup.execute(taken, task_id) == 1
        held.finish(how)
        record = wait_fenced(setup.log_text, task_id)
        assert record["status"] == "FAILED"
        assert setup.row(task_id) == ("FAILED", [worker_id], "operator.TookIt", "taken by hand")
    assert setup.stop() == exitcodes.EX_OK
