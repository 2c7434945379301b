"""Fixtures shared by every tier: a Django set up in-process, fresh databases, real supervisors.

Every test that takes ``db`` runs twice, on SQLite and on PostgreSQL (127.0.0.1:5432); the tests
chosen for the MariaDB leg (127.0.0.1:3306) say so with ``parametrize("db", [..., "mariadb"])``,
"mariadb" under READ COMMITTED (Django's default) or "mariadb-rr" under REPEATABLE READ (the
server's). When a database does not answer, its tests fail: a skipped database is a hole.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
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
    yield from fresh_database(request.param, databases)


def fresh_database(engine: str, databases: DatabaseFactory) -> Iterator[Database]:
    """The ``db`` fixture's body, for modules that override its engines (``request.param``)."""
    database = databases.create(engine)
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


# -- chaos figures, also under pytest-xdist (``make test`` runs two workers) -----------------------
# Each chaos run appends its figures to the file named by TS_CHAOS_FIGURES (tests/chaos/harness.py).
# The controlling process names one before its workers start (they inherit the environment), and
# prints what this session appended at the end.


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller set everything up
    from tests.chaos.harness import FIGURES_ENV

    path = os.environ.get(FIGURES_ENV)
    if not path:
        fd, path = tempfile.mkstemp(prefix="chaos-figures-", suffix=".jsonl")
        os.close(fd)
        os.environ[FIGURES_ENV] = path
        config.stash[_OWN_FILE] = path
    config.stash[_FIGURES_FROM] = (path, os.path.getsize(path) if os.path.exists(path) else 0)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or _FIGURES_FROM not in config.stash:
        return
    path, offset = config.stash[_FIGURES_FROM]
    try:
        with open(path, encoding="utf-8") as figures:
            figures.seek(offset)
            lines = [line for line in figures.read().splitlines() if line.strip()]
    except OSError:
        lines = []
    if lines:
        terminalreporter.section("chaos figures")
        for line in lines:
            terminalreporter.write_line(json.dumps(json.loads(line)))


def pytest_unconfigure(config: pytest.Config) -> None:
    if (own := config.stash.get(_OWN_FILE, None)) is not None:
        os.unlink(own)


_FIGURES_FROM = pytest.StashKey[tuple[str, int]]()
_OWN_FILE = pytest.StashKey[str]()
