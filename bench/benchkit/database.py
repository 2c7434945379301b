"""The databases under test and the driver's own Django, which enqueues tasks and reads rows.

A throw-away PostgreSQL database (``ts_bench_<random>``, dropped at the end) and a SQLite file in
the workspace. The driver runs Django with both configured (benchproject.driver_settings) and a
router pointing at the one under test; the workers see only that one.
"""

from __future__ import annotations

import datetime
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit.signals import uninterrupted

PROJECT = Path(__file__).resolve().parents[1] / "project"
PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("BENCH_PG_PORT", "5432")
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
POLL_INTERVAL = 0.01  # seconds between looks at a row the driver waits for
TASKS = {"noop": "benchapp.tasks.noop", "10ms": "benchapp.tasks.work_10ms"}


# A million finished rows in one statement (bench/dashboard.py, the bigtable figure): one in 33
# FAILED, spread over %(step)s-second steps back from now; {task_path}, {worker_ids} and {queue}
# are SQL expressions of g, the row's number.
PG_FINISHED_ROWS = """
INSERT INTO {table} (id, status, enqueued_at, started_at, finished_at, args_kwargs, priority, task_path,
                     worker_ids, queue_name, backend_name, run_after, return_value, exception_class_path, traceback)
SELECT gen_random_uuid(), CASE WHEN g %% 33 = 0 THEN 'FAILED' ELSE 'SUCCESSFUL' END,
       now() - make_interval(secs => g * %(step)s + 1), now() - make_interval(secs => g * %(step)s),
       now() - make_interval(secs => g * %(step)s - 0.01), '{{"args": [], "kwargs": {{}}}}'::jsonb, 0,
       {task_path}, {worker_ids}, {queue}, 'default', '9999-01-01 00:00:00+00', NULL,
       CASE WHEN g %% 33 = 0 THEN 'builtins.ValueError' ELSE '' END,
       CASE WHEN g %% 33 = 0 THEN E'Traceback (most recent call last):\\nValueError: boom' ELSE '' END
FROM generate_series(1, %(rows)s) AS g
"""


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


@dataclass(frozen=True, slots=True)
class Database:
    alias: str  # the driver's alias for it
    engine: str  # "postgres" or "sqlite": BENCH_DB_ENGINE of the workers
    name: str  # database name, or file path

    @property
    def label(self) -> str:
        return "PostgreSQL" if self.engine == "postgres" else "SQLite"

    def worker_env(self) -> dict[str, str]:
        return {
            "DJANGO_SETTINGS_MODULE": "benchproject.settings",
            "BENCH_DB_ENGINE": self.engine,
            "BENCH_DB_NAME": self.name,
        }


@dataclass(frozen=True, slots=True)
class Row:
    enqueued_at: datetime.datetime
    run_after: datetime.datetime | None
    started_at: datetime.datetime
    worker_id: str


@dataclass(frozen=True, slots=True)
class Window:
    """What a backlog run did: tasks finished, failed, and the span they were processed in."""

    finished: int
    failed: int
    seconds: float


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


@contextmanager
def postgres_database() -> Iterator[Database]:
    """A fresh PostgreSQL database for this run, dropped afterwards whatever happens."""
    name = f"ts_bench_{secrets.token_hex(4)}"
    try:
        with _pg_admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        raise BenchError(f"PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) refused a new database: {exc}") from exc
    try:
        yield Database("default", "postgres", name)
    finally:
        with uninterrupted():
            _drop_postgres(name)


def _drop_postgres(name: str) -> None:
    if "django" in sys.modules:
        from django.db import connections

        connections.close_all()
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_database(folder: Path) -> Database:
    return Database("sqlite", "sqlite", str(folder / "bench.sqlite3"))


def setup_django(postgres: Database, sqlite: Database) -> None:
    """Django in the driver, with both databases; call once, after they exist."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchproject.driver_settings"
    os.environ["BENCH_PG_NAME"] = postgres.name
    os.environ["BENCH_SQLITE_PATH"] = sqlite.name
    sys.path.insert(0, str(PROJECT))
    import django

    django.setup()


def migrate(db: Database) -> None:
    from django.core.management import call_command

    activate(db)  # data migrations that ignore their schema editor's alias go through the router
    call_command("migrate", database=db.alias, verbosity=0, interactive=False)


def activate(db: Database) -> None:
    """Route the driver's queries (and task.enqueue()) to ``db``."""
    from benchproject.routers import ActiveDatabase

    ActiveDatabase.alias = db.alias


def server_version(db: Database) -> str:
    if db.engine == "sqlite":
        return sqlite3.sqlite_version
    from django.db import connections

    with connections[db.alias].cursor() as cursor:
        cursor.execute("SHOW server_version")
        return str(cursor.fetchone()[0]).split()[0]


def _task(name: str) -> Any:
    from django.utils.module_loading import import_string

    return import_string(TASKS[name])


def _model() -> Any:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult


def clear(db: Database, since: datetime.datetime | None = None) -> None:
    """Delete every task row (or those enqueued since ``since``), so that each run counts only its own."""
    _rows(db, since).delete()


def _rows(db: Database, since: datetime.datetime | None) -> Any:
    activate(db)
    rows = _model().objects.using(db.alias).all()
    return rows if since is None else rows.filter(enqueued_at__gte=since)


def enqueue(db: Database, task: str = "noop", run_after: float | None = None) -> str:
    """Enqueue one task (``run_after`` seconds in the future if given); returns its id."""
    from django.utils import timezone

    activate(db)
    target = _task(task)
    if run_after is not None:
        target = target.using(run_after=timezone.now() + datetime.timedelta(seconds=run_after))
    return str(target.enqueue().id)


def enqueue_backlog(db: Database, task: str, count: int) -> None:
    """``count`` tasks in one transaction: they all become visible to the workers at once."""
    from django.db import transaction

    activate(db)
    target = _task(task)
    with transaction.atomic(using=db.alias):
        for _ in range(count):
            target.enqueue()


def wait_started(db: Database, task_id: str, timeout: float, first_look: float = 0.0) -> Row:
    """The task's row once a worker has claimed it; the first query ``first_look`` seconds in."""
    activate(db)
    rows = _model().objects.using(db.alias).filter(id=task_id, started_at__isnull=False)
    deadline = time.monotonic() + timeout
    time.sleep(first_look)
    while time.monotonic() < deadline:
        found = rows.values_list("enqueued_at", "run_after", "started_at", "worker_ids").first()
        if found is not None:
            enqueued_at, run_after, started_at, worker_ids = found
            return Row(enqueued_at, run_after, started_at, worker_ids[-1] if worker_ids else "")
        time.sleep(POLL_INTERVAL)
    raise BenchError(f"task {task_id} did not start within {timeout:g}s")


def wait_drained(db: Database, timeout: float) -> None:
    """Until no task is READY or RUNNING."""
    activate(db)
    pending = _model().objects.using(db.alias).filter(status__in=["READY", "RUNNING"])
    deadline = time.monotonic() + timeout
    while pending.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"{pending.count()} tasks still pending after {timeout:g}s")
        time.sleep(0.1)


def window(db: Database, since: datetime.datetime | None = None) -> Window:
    """First started_at to last finished_at over every row (or those enqueued since ``since``)."""
    from django.db.models import Count, Max, Min, Q

    found = _rows(db, since).aggregate(
        first=Min("started_at"),
        last=Max("finished_at"),
        finished=Count("id", filter=Q(finished_at__isnull=False)),
        failed=Count("id", filter=Q(status="FAILED")),
    )
    if found["first"] is None or found["last"] is None:
        raise BenchError("no task was processed")
    return Window(found["finished"], found["failed"], (found["last"] - found["first"]).total_seconds())
