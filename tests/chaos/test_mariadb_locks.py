"""MariaDB: another session holds a lock the supervisor's chores need while a child dies.

An operator's ``mysql`` shell with a ``SELECT ... FOR UPDATE`` left open, or a deploy's
``ALTER TABLE`` (here ``LOCK TABLES ... WRITE``, which takes the same metadata lock), holds the
lost task's row or the whole task table for HOLD seconds. The supervisor must keep turning:
/livez and ``status`` answer within the chores' time box, its heartbeat goes on, no task of a
live child is stopped or run twice, and the lost row is recorded once the lock is gone. Before
the session limits and the watchdog, the loop waited as long as the lock was held (up to 50 s for
a row, a day for a table), and a mysqlclient call cut late left its connection out of sync.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from typing import Any

import pytest

from task_supervisor import events
from tests.chaos.harness import (
    LIVEZ_WITHIN,
    LOST_CLASS,
    Figures,
    Probe,
    http_get,
    observed_config,
    probing,
    rows,
    unique_node,
)
from tests.support import Database, SupervisorProcess, my_connect, my_execute, wait_until

pytestmark = pytest.mark.timeout(150)

HOLD = 8.0  # seconds the other session holds its lock: twice LIVEZ_WITHIN, well under any lock timeout's default
STATUS_AT = 3.0  # seconds into the hold when `status` is asked: past the chores' first lock timeout
POOL = """
[pools.default]
processes = 2
interval = "100ms"
on_worker_lost = "fail"
"""
OUT_OF_SYNC = "Commands out of sync"  # mysqlclient's error 2014, for a connection cut mid-call and used again


def table() -> str:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult._meta.db_table


def key(value: Any) -> str:
    """A task id as its column stores it."""
    from django.db import connection
    from django_tasks_db.models import DBTaskResult

    return str(DBTaskResult._meta.pk.get_db_prep_value(value, connection))


@contextlib.contextmanager
def held_lock(db: Database, lock: str, task_id: Any) -> Any:
    """Another session holding the lost task's row, or the whole task table, until the block ends."""
    with contextlib.closing(my_connect(db.name)) as other:
        if lock == "row":
            my_execute(other, "BEGIN", f"SELECT id FROM {table()} WHERE id = '{key(task_id)}' FOR UPDATE")
            yield
            my_execute(other, "ROLLBACK")
        else:
            my_execute(other, f"LOCK TABLES {table()} WRITE")
            yield
            my_execute(other, "UNLOCK TABLES")


def longest_silence(probe: Probe, start: float, end: float) -> float:
    """The longest time between two /livez answers in [start, end]: how long the loop was held
    (a probe that times out waits PROBE_TIMEOUT only, so its own duration says less)."""
    answered = sorted(s.at + s.livez_seconds for s in probe.samples if s.livez == 200)
    moments = [start, *(t for t in answered if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(moments))


def pace_until(moment: float) -> None:
    """Let time pass to ``moment``: the lock is held for a set time, whatever happens meanwhile."""
    while time.monotonic() < moment:
        time.sleep(0.05)


def timed_status(sup: SupervisorProcess) -> tuple[float, dict[str, Any]]:
    began = time.monotonic()
    answer = sup.status()
    return time.monotonic() - began, answer


@pytest.mark.parametrize(("db", "lock"), [("mariadb-rr", "row"), ("mariadb", "table")], indirect=["db"])
def test_a_lock_held_by_another_session_while_a_child_dies_never_holds_the_loop(supervisor, db, tmp_path, lock):
    from tsapp import tasks

    cfg = observed_config(POOL, tmp_path, unique_node("locks"))
    sup = supervisor(cfg.text)
    wait_until(lambda: http_get(cfg.port, "/readyz")[0] == 200, 30, message=lambda: f"ready; log:\n{sup.tail()}")
    runs = tmp_path / "live.runs"
    live = tasks.interval_task.enqueue(str(runs), HOLD + 4)  # a live child's task, running throughout
    wait_until(runs.exists, message="the live task to start")
    marker = tmp_path / "lost.started"
    lost = tasks.sleep.enqueue(60, str(marker))
    wait_until(marker.exists, message=lambda: f"the lost task to start; log:\n{sup.tail()}")

    with probing(cfg.port) as probe, held_lock(db, lock, lost.id):
        began = time.monotonic()
        os.kill(int(marker.read_text()), signal.SIGKILL)
        sup.wait_event(events.TASK_LOST, task_id=str(lost.id))
        pace_until(began + STATUS_AT)
        status_seconds, status = timed_status(sup)  # asked while the chores keep meeting the lock
        pace_until(began + HOLD)
        released = time.monotonic()
    finished = sup.wait_event(events.TASK_LOST_HANDLED, task_id=str(lost.id), timeout=30)
    recorded_after = time.monotonic() - released
    wait_until(lambda: rows().get(id=live.id).status == "SUCCESSFUL", 30, message=lambda: sup.tail())

    slowest = probe.slowest_livez(began, released)
    failed = rows().get(id=lost.id)
    Figures(
        test=f"mariadb {lock} lock held while a child dies",
        database=db.engine,
        tasks=2,
        children_killed=1,
        faults=[f"another session holds the lost task's {lock} lock for {HOLD:g}s"],
        recovery_seconds={"lost_row_recorded_after_release": recorded_after},
        seconds=time.monotonic() - began,
        notes={
            "slowest_livez_s": round(slowest.livez_seconds, 3),
            "longest_without_livez_s": round(longest_silence(probe, began, released), 3),
            "status_s": round(status_seconds, 3),
            "db_errors": len(sup.events(events.DB_ERROR)),
        },
    ).report()

    assert sup.has_event(events.DB_ERROR)  # the chores met the lock, and gave up on it for a while
    assert slowest.livez == 200 and slowest.livez_seconds < LIVEZ_WITHIN, slowest
    assert status and status_seconds < LIVEZ_WITHIN, (status_seconds, sup.tail())
    assert finished["status"] == "FAILED" and failed.exception_class_path == LOST_CLASS
    starts = [line for line in runs.read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 1 and len(rows().get(id=live.id).worker_ids) == 1  # ran once, claimed once
    assert not sup.has_event(events.LEASE_LOST) and not sup.has_event(events.TASK_FENCED)
    assert OUT_OF_SYNC not in sup.log()
