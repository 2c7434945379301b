"""Fixtures shared by every tier: a Django set up in-process, fresh databases, real supervisors.

Every test that takes ``db`` runs twice, on SQLite and on PostgreSQL (127.0.0.1:5432); the tests
chosen for the MariaDB leg (127.0.0.1:3306) say so with ``parametrize("db", [..., "mariadb"])``,
"mariadb" under READ COMMITTED (Django's default) or "mariadb-rr" under REPEATABLE READ (the
server's). When a database does not answer, its tests fail: a skipped database is a hole.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import PROJECT, Database, DatabaseFactory, SupervisorProcess, use_database

sys.path.insert(0, str(PROJECT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tsproject.settings")


@pytest.fixture(scope="session")
def django_ready(tmp_path_factory: pytest.TempPathFactory) -> None:
    import django

    os.environ.setdefault("TS_DB_NAME", str(tmp_path_factory.mktemp("django") / "unused.sqlite3"))
    django.setup()


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(tmp_path_factory.mktemp("databases"))
    yield factory
    factory.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, databases: DatabaseFactory, django_ready: None) -> Iterator[Database]:
    """A fresh migrated database, also the in-process Django's "default"."""
    database = databases.create(request.param)
    use_database(database)
    yield database
    from django.db import connections

    connections.close_all()
    databases.drop(database)


@pytest.fixture
def supervisor(tmp_path: Path, db: Database) -> Iterator[Callable[..., SupervisorProcess]]:
    """Start real supervisors on ``db``; every one is killed, with its children, at teardown."""
    started: list[SupervisorProcess] = []

    def start(config_text: str, **env: str) -> SupervisorProcess:
        workdir = tmp_path / f"sup{len(started)}"
        workdir.mkdir()
        proc = SupervisorProcess(workdir, db, config_text, extra_env=env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
