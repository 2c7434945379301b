"""Real supervisors, real db_worker children, real tasks, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from task_supervisor import events, exitcodes
from tests.support import config_toml, wait_until

TWO_POOLS = """
[pools.default]
processes = 2
interval = "100ms"

[pools.reports]
queues = ["reports"]
processes = 1
interval = "100ms"
"""

ONE_POOL = """
[pools.default]
processes = 1
interval = "100ms"
"""


def rows():
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.all()


def status_of(result) -> str:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.get(id=result.id).status


def wait_status(result, status: str, timeout: float = 30.0) -> None:
    wait_until(lambda: status_of(result) == status, timeout, message=f"task {result.id} {status}")


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb"], indirect=True)
def test_pools_run_tasks_and_drain_on_sigterm(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO_POOLS))
    adds = [tasks.add.enqueue(i, 1) for i in range(10)]
    reports = [tasks.report.enqueue(i) for i in range(3)]
    for result in adds + reports:
        wait_status(result, "SUCCESSFUL")
    assert len(sup.wait_children(3)) == 3

    by_id = {str(r.id): r for r in rows()}
    for result in adds:
        (worker_id,) = by_id[str(result.id)].worker_ids
        assert re.fullmatch(r"testnode:default:[01]:\d+", worker_id), worker_id
        assert by_id[str(result.id)].return_value == result.args[0] + 1
    for result in reports:
        (worker_id,) = by_id[str(result.id)].worker_ids
        assert re.fullmatch(r"testnode:reports:0:\d+", worker_id), worker_id

    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == exitcodes.EX_OK
    assert sup.has_event(events.DRAIN_STARTED) and sup.has_event(events.SUPERVISOR_STOPPED)
    assert not sup.has_event(events.FORCED_STOP) and not sup.has_event(events.CHILD_KILLED)


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb-rr"], indirect=True)
def test_crashed_child_is_replaced(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL))
    first = sup.wait_ready("default", 0)
    assert first["worker_id"].startswith("testnode:default:0:")
    os.kill(first["pid"], signal.SIGKILL)
    sup.wait_event(events.CHILD_CRASHED, pool="default", slot=0, pid=first["pid"])
    sup.wait_event(events.CHILD_STARTED, pool="default", slot=0, count=2)
    second = sup.wait_ready("default", 0)
    assert second["pid"] != first["pid"] and second["worker_id"] != first["worker_id"]
    result = tasks.add.enqueue(2, 3)
    wait_status(result, "SUCCESSFUL")
    assert rows().get(id=result.id).worker_ids == [second["worker_id"]]


def test_child_exiting_mid_task_is_replaced(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL))
    lost = tasks.exit_process.enqueue(3)
    crashed = sup.wait_event(events.CHILD_CRASHED, pool="default", slot=0)
    sup.wait_event(events.TASK_LOST, pid=crashed["pid"], task_id=str(lost.id))
    sup.wait_event(events.CHILD_STARTED, pool="default", slot=0, count=2)
    result = tasks.add.enqueue(1, 1)
    wait_status(result, "SUCCESSFUL")


def test_child_recycles_after_max_tasks(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL + "max_tasks = 2\n"))
    results = [tasks.add.enqueue(i, i) for i in range(6)]
    for result in results:
        wait_status(result, "SUCCESSFUL")
    sup.wait_event(events.CHILD_RECYCLED, pool="default", count=2)
    workers = [rows().get(id=r.id).worker_ids[0] for r in results]
    assert len(set(workers)) == 3, workers  # generations 1, 2 and 3, two tasks each
    assert not sup.has_event(events.CHILD_BOOT_FAILED) and not sup.has_event(events.CHILD_CRASHED)


def test_drain_lets_the_running_task_finish_and_starts_no_new_one(supervisor, db, tmp_path: Path):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL))
    marker = tmp_path / "started"
    running = tasks.sleep.enqueue(1.5, str(marker))
    wait_until(marker.exists, message="the task to start")
    waiting = tasks.add.enqueue(1, 2)
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == exitcodes.EX_OK
    assert status_of(running) == "SUCCESSFUL"
    assert status_of(waiting) == "READY"


def test_second_signal_stops_at_once(supervisor, db, tmp_path: Path):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL))
    marker = tmp_path / "started"
    tasks.sleep.enqueue(60, str(marker))
    wait_until(marker.exists, message="the task to start")
    child_pid = int(marker.read_text())
    sup.signal(signal.SIGINT)
    sup.wait_event(events.DRAIN_STARTED)
    started = time.monotonic()
    sup.signal(signal.SIGINT)
    assert sup.wait_exit(timeout=15) == exitcodes.EX_FORCED
    assert time.monotonic() - started < 10
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


def test_sigquit_stops_at_once(supervisor, db):
    sup = supervisor(config_toml(TWO_POOLS))
    children = sup.wait_children(3)
    sup.signal(signal.SIGQUIT)
    assert sup.wait_exit(timeout=15) == exitcodes.EX_FORCED
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive


def test_hup_resizes_pools(supervisor, db):
    sup = supervisor(config_toml(ONE_POOL))
    sup.wait_children(1)
    sup.write_config(config_toml(ONE_POOL.replace("processes = 1", "processes = 3")))
    sup.signal(signal.SIGHUP)
    sup.wait_event(events.POOL_RESIZED, pool="default")
    sup.wait_children(3)
    third = sup.wait_ready("default", 2)
    sup.write_config(config_toml(ONE_POOL))
    sup.signal(signal.SIGHUP)
    sup.wait_event(events.POOL_RESIZED, pool="default", count=2)
    sup.wait_children(1)
    sup.wait_event(events.CHILD_STOPPED, pool="default", slot=2, pid=third["pid"])
    assert not sup.has_event(events.CHILD_KILLED)  # it stopped within its grace period


def test_hup_adds_removes_and_rolls_pools(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL))
    old = sup.wait_ready("default", 0)
    changed = ONE_POOL.replace('"100ms"', '"200ms"') + '\n[pools.reports]\nqueues = ["reports"]\n'
    sup.write_config(config_toml(changed))
    sup.signal(signal.SIGHUP)
    sup.wait_event(events.POOL_ROLLED, pool="default")
    sup.wait_event(events.POOL_ADDED, pool="reports")
    stopped = sup.wait_event(events.CHILD_STOPPED, pool="default", pid=old["pid"])
    # New children up before old ones drain.
    logged = sup.events()
    assert logged.index(sup.events(events.CHILD_STARTED, pool="default", slot=0)[1]) < logged.index(stopped)
    result = tasks.report.enqueue(7)
    wait_status(result, "SUCCESSFUL")

    sup.write_config(config_toml('[pools.reports]\nqueues = ["reports"]\n'))
    sup.signal(signal.SIGHUP)
    sup.wait_event(events.POOL_REMOVED, pool="default")
    sup.wait_children(1)


def test_bad_config_on_hup_keeps_running_config(supervisor, db):
    sup = supervisor(config_toml(ONE_POOL))
    sup.wait_children(1)
    sup.write_config(config_toml(ONE_POOL.replace("processes = 1", "processes = 0")))
    sup.signal(signal.SIGHUP)
    refused = sup.wait_event(events.RELOAD_FAILED)
    assert "pools.default.processes" in refused["message"]  # the error names the key to fix
    assert not sup.has_event(events.RELOADED)
    assert len(sup.wait_children(1)) == 1
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == exitcodes.EX_OK


def test_children_exit_when_the_supervisor_is_killed(supervisor, db, tmp_path: Path):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO_POOLS))
    marker = tmp_path / "started"
    running = tasks.sleep.enqueue(1.0, str(marker))
    wait_until(marker.exists, message="the task to start")
    children = sup.wait_children(3)
    sup.signal(signal.SIGKILL)
    sup.wait_exit()
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, alive
    # The busy child finished its task before leaving.
    assert status_of(running) == "SUCCESSFUL"


def test_exec_start_runs_a_fresh_interpreter(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL + 'start = "exec"\n'))
    sup.wait_children(1)
    result = tasks.argv0.enqueue()
    wait_status(result, "SUCCESSFUL")
    assert rows().get(id=result.id).return_value.endswith("/worker/__main__.py")  # python -m task_supervisor.worker


def test_children_that_cannot_boot_make_the_supervisor_give_up(supervisor, db):
    text = config_toml(ONE_POOL + 'start = "exec"\n').replace("tsproject.settings", "tsproject.settings_childfail")
    sup = supervisor(text)
    assert sup.wait_exit(timeout=60) == exitcodes.EX_NO_WORKERS
    assert sup.has_event(events.CHILD_BOOT_FAILED, pool="default")
    (gave_up,) = sup.events(events.SUPERVISOR_GAVE_UP)
    assert "broken in children" in gave_up["message"], gave_up  # the children's own reason, for the operator
    assert sup.events()[-1]["event"] == events.SUPERVISOR_STOPPED


@pytest.mark.parametrize("db", ["mariadb"], indirect=True)
def test_check_fails_on_mariadb_settings_that_break_the_guarantees_and_warns_of_risky_ones(db, tmp_path: Path):
    import subprocess
    import sys

    from task_supervisor.models import NodeHeartbeat
    from tests.support import my_connect, my_execute

    path = tmp_path / "config.toml"
    path.write_text(config_toml(ONE_POOL))

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "task_supervisor", "check", "-c", str(path)]
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **db.env, **env}, timeout=60)

    fine = check()
    assert fine.returncode == exitcodes.EX_OK and "warning" not in fine.stderr, fine.stderr
    risky = check(TS_DB_ISOLATION="serializable")
    assert risky.returncode == exitcodes.EX_OK, risky.stderr
    assert "warning: Database 'default' (MariaDB) runs at SERIALIZABLE" in risky.stderr

    table = NodeHeartbeat._meta.db_table
    conn = my_connect(db.name)
    try:
        my_execute(conn, f"ALTER TABLE {table} ENGINE=MyISAM")
    finally:
        conn.close()
    broken = check(TS_DB_ISOLATION="read uncommitted")
    assert broken.returncode == exitcodes.EX_CHECK_FAILED
    assert "Database 'default' (MariaDB) runs at READ UNCOMMITTED" in broken.stderr
    assert f"Table {table} of database 'default' (MariaDB) uses the MyISAM storage engine" in broken.stderr
