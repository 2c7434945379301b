"""Instant pickup with real supervisors: idle children stop polling while notices arrive and go
back to their interval the moment the LISTEN connection is lost; one new task brings one node's
child, not every node's; a run_after task starts at its time, not at the next safety poll.
SQLite has no notices: children poll at their interval. PostgreSQL is tested direct and through
PgBouncer in transaction pooling (the supervisor's LISTEN connection direct beside it)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from task_supervisor import events
from tests.conftest import fresh_database
from tests.realproc.test_supervision import wait_status
from tests.support import PG_PORT, config_toml, pg_connect, wait_until

IDLE = """
[pools.default]
processes = 2
interval = "200ms"
"""
SHORT_BEATS = 'node_timeout = "12s"'  # beats every 3s: the fleet is read soon after a start
QUIET = 3.0  # seconds of an idle node watched


@pytest.fixture(params=["sqlite", "postgres", "pgbouncer"])
def db(request, databases, django_ready):
    """Also through PgBouncer in transaction pooling, the supervisor's LISTEN direct."""
    yield from fresh_database(request.param, databases)


def empty_claims(sup) -> int:
    return int(sup.status().get("pickup", {}).get("empty_claims", 0))


def quiet_claims(sup) -> int:
    """Claims that found nothing while the node sat idle for QUIET seconds."""
    before = empty_claims(sup)
    time.sleep(QUIET)  # measuring an absence: nothing to poll for
    return empty_claims(sup) - before


def listen_backend(sup, db) -> int | None:
    """The PostgreSQL backend pid of the supervisor's LISTEN connection."""
    connections = psutil.Process(sup.pid).net_connections("tcp")
    ports = [c.laddr.port for c in connections if c.raddr and c.raddr.port == PG_PORT]
    with pg_connect() as conn:
        found = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND client_port = ANY(%s) "
            "AND query LIKE 'SELECT 1 FROM pg_trigger%%'",
            [db.name, ports],
        ).fetchone()
    return found[0] if found else None


def test_idle_children_poll_only_as_a_safety_net_while_notices_arrive(supervisor, db):
    sup = supervisor(config_toml(IDLE))
    sup.wait_event(events.CHILD_READY, count=2)
    if db.engine == "sqlite":
        assert quiet_claims(sup) >= 6  # two children, every 200 ms
        assert sup.status()["pickup"]["instant"] is False
        return
    sup.wait_event(events.PICKUP_INSTANT)
    assert sup.status()["pickup"]["instant"] is True
    assert quiet_claims(sup) <= 2  # at most a poll under way at the switch

    # The LISTEN connection dies: the children poll at their interval at once, until it is back.
    backend = wait_until(lambda: listen_backend(sup, db), message="the LISTEN connection")
    with pg_connect() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [backend])
    sup.wait_event(events.PICKUP_POLLING, timeout=10)
    sup.wait_event(events.PICKUP_INSTANT, count=2, timeout=20)
    assert sup.events(events.LISTEN_LOST)
    assert quiet_claims(sup) <= 2


def test_a_task_is_taken_at_once_by_one_node_of_two(supervisor, db):
    from tsapp import tasks

    nodes = [supervisor(config_toml(IDLE, extra=SHORT_BEATS, node=name)) for name in ("alpha", "beta")]
    for sup in nodes:
        sup.wait_event(events.CHILD_READY, count=2)
        if db.engine != "sqlite":
            sup.wait_event(events.PICKUP_INSTANT)
    if db.engine != "sqlite":  # both nodes know the fleet: a heartbeat after both started
        wait_until(lambda: all(s.status()["pickup"]["fleet"] == 2 for s in nodes), 20, 0.3, "the fleet of two")
    before = sum(empty_claims(s) for s in nodes)
    results = []
    for n in range(12):
        result = tasks.add.enqueue(n, 1)
        wait_status(result, "SUCCESSFUL", timeout=10)
        results.append(result)
    from django_tasks_db.models import DBTaskResult

    found = DBTaskResult.objects.filter(id__in=[r.id for r in results])
    waits = sorted((r.started_at - r.enqueued_at).total_seconds() for r in found)
    owners = {r.worker_ids[-1].split(":")[0] for r in found}
    empty = sum(empty_claims(s) for s in nodes) - before
    print(f"{db.engine}: 12 tasks on 2 nodes; pickup max {waits[-1] * 1000:.0f} ms; empty claims {empty}")
    if db.engine == "sqlite":
        return
    assert waits[-1] < 1.0, waits
    assert owners == {"alpha", "beta"}  # the task ids spread the work
    # One attempt that claims, and db_worker's own look for more after each task: about one
    # empty claim per task. Every node waking a child would add one more per task and node.
    wakes = [s.status()["pickup"]["wakes"] for s in nodes]
    assert empty <= 12 + 4, (empty, wakes)
    assert sum(w.get("notice", 0) + w.get("pass", 0) for w in wakes) >= 12, wakes


def test_a_task_due_later_starts_at_its_time(supervisor, db):
    import datetime

    from django.utils import timezone
    from tsapp import tasks

    sup = supervisor(config_toml(IDLE))
    sup.wait_event(events.CHILD_READY, count=2)
    if db.engine != "sqlite":
        sup.wait_event(events.PICKUP_INSTANT)
    result = tasks.add.using(run_after=timezone.now() + datetime.timedelta(seconds=2)).enqueue(1, 1)
    wait_status(result, "SUCCESSFUL", timeout=15)
    from django_tasks_db.models import DBTaskResult

    found = DBTaskResult.objects.get(id=result.id)
    late = (found.started_at - found.run_after).total_seconds()
    print(f"{db.engine}: run_after task started {late * 1000:.0f} ms after its time")
    assert -0.05 < late < 1.5, late


@pytest.mark.parametrize("db", ["pgbouncer"], indirect=True)
def test_a_listen_through_pgbouncer_is_found_deaf_and_children_keep_polling(supervisor, db):
    from tsapp import tasks
    sup = supervisor(config_toml(IDLE, extra='listen_database = ""'))
    sup.wait_event(events.CHILD_READY, count=2)
    sup.wait_event(events.LISTENING)
    sup.wait_event(events.LISTEN_DEAF, timeout=10)
    assert not sup.has_event(events.PICKUP_INSTANT)
    assert quiet_claims(sup) >= 6  # still at their 200 ms interval
    wait_status(tasks.add.enqueue(1, 2), "SUCCESSFUL", timeout=10)


def check(sup) -> subprocess.CompletedProcess[str]:
    sup.write_config(sup.config_text)
    command = [sys.executable, "-m", "task_supervisor", "check", "-c", str(sup.config_path)]
    return subprocess.run(command, env=sup.env, capture_output=True, text=True, timeout=60)


def test_check_names_a_listen_database_that_cannot_serve(tmp_path, db):
    from tests.support import SupervisorProcess

    sup = SupervisorProcess(tmp_path, db, config_toml(IDLE, extra='listen_database = "nowhere"'))
    out = check(sup)
    assert out.returncode != 0
    assert "supervisor.listen_database is 'nowhere', which is not in DATABASES" in out.stderr + out.stdout
    if db.engine == "pgbouncer":  # the tests' settings: direct LISTEN, no server-side cursors
        sup = SupervisorProcess(tmp_path, db, config_toml(IDLE))
        out = check(sup)
        assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
