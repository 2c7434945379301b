"""The chores' time box and the session limits of recovery.bounded, on real databases.

mysqlclient waits inside C and reads again when a signal interrupts it, so on MariaDB only the
watchdog's cut ends a call at the deadline; these tests hold the call with a sleeping statement,
a row lock, a metadata lock and a stalled network, and time how long it held the caller.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from task_supervisor.chores import recovery
from task_supervisor.chores.timebox import TimeboxExceeded, timebox
from tests.chaos.proxy import FaultProxy
from tests.support import MARIADB_ENGINES, MY_HOST, MY_PORT, Database, my_connect, my_execute, pg_connect, use_database

DEADLINE = 1.0  # seconds: the time box of these tests
LATE = 1.0  # seconds past a deadline or limit that a loaded two-core machine may add
SLEEP = {"postgres": "SELECT pg_sleep(8)", "mariadb": "SELECT SLEEP(8)", "mariadb-rr": "SELECT SLEEP(8)"}
SERVERS = ["postgres", "mariadb"]
MARIADB = pytest.mark.parametrize("db", list(MARIADB_ENGINES), indirect=True)


def run(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def held(block: Any) -> tuple[float, BaseException | None]:
    """(seconds ``block`` took, what it raised)."""
    began = time.monotonic()
    try:
        block()
    except Exception as exc:
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


def boxed(sql: str) -> None:
    with timebox(DEADLINE, "the test's query", ["default"]):
        run(sql)


@pytest.mark.parametrize("db", SERVERS, indirect=True)
def test_a_query_past_the_deadline_is_cut_and_the_next_one_runs_on_a_fresh_connection(db):
    from django.db import connection

    threads = threading.active_count()
    run("SELECT 1")
    seconds, raised = held(lambda: boxed(SLEEP[db.engine]))
    assert isinstance(raised, TimeboxExceeded), raised
    assert DEADLINE <= seconds < DEADLINE + LATE, seconds
    assert connection.connection is None  # closed: a cut connection is never used again
    assert threading.active_count() == threads  # the watchdog was joined: the loop may fork
    assert run("SELECT 1") == [(1,)]  # not out of sync


@pytest.mark.parametrize("db", ["sqlite", *SERVERS], indirect=True)
def test_a_block_that_finishes_in_time_keeps_its_connection_and_leaves_no_thread(db):
    from django.db import connection

    threads = threading.active_count()
    run("SELECT 1")
    before = connection.connection
    with timebox(DEADLINE, "the test's query", ["default"]):
        assert threading.active_count() == threads  # nothing run yet: no thread started
        run("SELECT 1")
        # A watchdog for a connection with a socket only: SQLite has none.
        assert threading.active_count() == threads + (db.engine != "sqlite")
    assert threading.active_count() == threads
    assert connection.connection is before


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_the_time_box_hands_back_an_alarm_set_before_it(db):
    import signal

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with timebox(DEADLINE, "nothing"):
            pass
        wait = time.monotonic() + 5
        while not fired and time.monotonic() < wait:
            time.sleep(0.01)  # waiting for the outer alarm, which only time brings
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == [signal.SIGALRM]


@pytest.fixture
def stalled(databases, django_ready) -> Iterator[FaultProxy]:
    """The in-process Django on a fresh MariaDB database through a proxy the test stalls."""
    from django.db import connections

    database = databases.create("mariadb")
    with FaultProxy(MY_HOST, MY_PORT) as proxy:
        use_database(database)
        settings = {**database.settings_dict(), "PORT": str(proxy.port)}
        connections.settings["default"] = connections.configure_settings({"default": settings})["default"]
        yield proxy
        connections.close_all()
    databases.drop(database)


def test_mysqlclient_on_a_stalled_network_is_cut_at_the_deadline(stalled):
    run("SELECT 1")
    stalled.stall()
    seconds, raised = held(lambda: boxed("SELECT 1"))
    stalled.restore()
    assert isinstance(raised, TimeboxExceeded), raised
    assert DEADLINE <= seconds < DEADLINE + LATE, seconds
    assert run("SELECT 1") == [(1,)]


def test_mysqlclient_on_a_stalled_network_is_cut_before_the_first_statement_too(stalled):
    """bounded() lets the time box see the connection before autocommit(False), no statement."""
    from task_supervisor import compat

    backend = compat.resolve("default")
    run("SELECT 1")
    stalled.stall()

    def transaction() -> None:
        with timebox(DEADLINE, "the test's transaction", ["default"]), recovery.bounded(backend):
            run("SELECT 1")

    seconds, raised = held(transaction)
    stalled.restore()
    assert isinstance(raised, TimeboxExceeded), raised
    assert DEADLINE <= seconds < DEADLINE + LATE, seconds


def test_mysqlclient_stalled_inside_a_transaction_reconnects_only_briefly(stalled):
    """The rollback fails on the cut connection, so Django closes it and connects again to restore
    autocommit, still inside the box: that connect ends at the 1 s connect_timeout lent after the
    deadline, not when the network comes back."""
    from task_supervisor import compat

    backend = compat.resolve("default")
    with recovery.bounded(backend):
        run("SELECT 1")  # the session limits are set: the next transaction's first call is autocommit(False)

    def transaction() -> None:
        with timebox(DEADLINE, "the test's transaction", ["default"]), recovery.bounded(backend):
            run("SELECT 1")
            stalled.stall()
            run("SELECT 2")

    seconds, raised = held(transaction)
    stalled.restore()
    assert isinstance(raised, TimeboxExceeded), raised
    assert DEADLINE <= seconds < DEADLINE + 1 + LATE, seconds
    from django.db import connection

    assert "connect_timeout" not in connection.settings_dict["OPTIONS"]  # lent, and given back
    assert run("SELECT 1") == [(1,)]


# -- the server's own limits, set by bounded() ------------------------------------------------

LIMIT = recovery.STATEMENT_TIMEOUT_MS / 1000


@contextlib.contextmanager
def other_session(db: Database) -> Iterator[Any]:
    """Another client of the test's database, in autocommit, as an operator's shell would be."""
    if db.engine == "postgres":
        with pg_connect(db.name) as conn:
            yield conn
    else:
        with contextlib.closing(my_connect(db.name)) as conn:
            yield conn


def execute(conn: Any, *statements: str) -> None:
    if hasattr(conn, "execute"):  # psycopg
        for statement in statements:
            conn.execute(statement)
    else:
        my_execute(conn, *statements)


def in_bounded_transaction(sql: str, params: Any = ()) -> None:
    from task_supervisor import compat

    with recovery.bounded(compat.resolve("default")):
        run(sql, params)


@pytest.mark.parametrize("db", ["postgres", *MARIADB_ENGINES], indirect=True)
def test_a_row_locked_by_another_session_holds_a_chore_for_the_lock_timeout_only(db):
    from tsapp import tasks

    table, key = _table(), _key(tasks.noop.enqueue().id)
    with other_session(db) as other:
        execute(other, "BEGIN", f"SELECT id FROM {table} WHERE id = '{key}' FOR UPDATE")
        sql = f"SELECT id FROM {table} WHERE id = %s FOR UPDATE"
        seconds, raised = held(lambda: in_bounded_transaction(sql, [key]))
        execute(other, "ROLLBACK")
    assert raised is not None, "the chore waited for the lock to go"  # a lock wait or statement timeout
    assert LIMIT <= seconds < LIMIT + LATE, seconds


@MARIADB
def test_a_table_locked_by_another_session_holds_a_chore_for_the_metadata_lock_timeout_only(db):
    """LOCK TABLES ... WRITE, like an ALTER TABLE of a deploy, takes the table's metadata lock."""
    table = _table()
    with other_session(db) as other:
        execute(other, f"LOCK TABLES {table} WRITE")
        seconds, raised = held(lambda: in_bounded_transaction(f"SELECT count(*) FROM {table}"))
        execute(other, "UNLOCK TABLES")
    assert raised is not None, "the chore waited for the lock to go"  # a lock wait or statement timeout
    assert LIMIT <= seconds < LIMIT + LATE, seconds


@pytest.mark.parametrize("db", ["postgres", "mariadb"], indirect=True)
def test_a_slow_statement_is_ended_by_the_server(db):
    seconds, raised = held(lambda: in_bounded_transaction(SLEEP[db.engine]))
    assert raised is not None, "the statement ran to its end"
    assert LIMIT <= seconds < LIMIT + LATE, seconds


def test_mysql_and_mariadb_limits_name_their_own_variables():
    assert recovery.mysql_limits(mariadb=True) == (
        "SET SESSION innodb_lock_wait_timeout = 2, lock_wait_timeout = 2, max_statement_time = 2, "
        f"idle_transaction_timeout = {recovery.IDLE_TRANSACTION_TIMEOUT_S}"
    )
    assert recovery.mysql_limits(mariadb=False) == (
        "SET SESSION innodb_lock_wait_timeout = 2, lock_wait_timeout = 2, max_execution_time = 2000"
    )


def _table() -> str:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult._meta.db_table


def _key(value: Any) -> str:
    """A task id as its column stores it (with dashes or without, by database)."""
    from django.db import connection
    from django_tasks_db.models import DBTaskResult

    return str(DBTaskResult._meta.pk.get_db_prep_value(value, connection))
