"""Nothing a child does leaves a task RUNNING: timeouts, crashes, kills, dead nodes, restarts."""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

import pytest

from task_supervisor import events, exitcodes
from task_supervisor.wire.spec import WorkerId
from tests.realproc.test_supervision import ONE_POOL, rows, wait_status
from tests.support import config_toml, wait_until

TIMEOUT_CLASS = "task_supervisor.TaskTimeout"
LOST_CLASS = "task_supervisor.WorkerLost"


def row(result):
    return rows().get(id=result.id)


def wait_finished(result, status: str = "FAILED", timeout: float = 30.0):
    wait_status(result, status, timeout)
    return row(result)


def started(tmp_path: Path, name: str = "started") -> tuple[Path, callable]:
    marker = tmp_path / name
    return marker, lambda: wait_until(marker.exists, message=f"{marker.name} to appear")


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb"], indirect=True)
def test_soft_timeout_fails_the_task_and_the_child_goes_on(supervisor, db, tmp_path):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL + 'timeout = "1s"\n'))
    result = tasks.sleep.enqueue(30)
    failed = wait_finished(result)
    assert failed.exception_class_path == TIMEOUT_CLASS
    assert "TaskTimeout: Task tsapp.tasks.sleep ran past its timeout of 1s." in failed.traceback
    assert "time.sleep(seconds)" in failed.traceback  # raised inside the task itself
    after = tasks.add.enqueue(1, 1)
    wait_status(after, "SUCCESSFUL")
    assert row(after).worker_ids == row(result).worker_ids  # same child, not a new one
    assert sup.has_event(events.TASK_TIMEOUT, task_id=str(result.id))
    assert not sup.has_event(events.TASK_TIMEOUT_KILL)


def test_task_timeouts_win_over_the_pool_and_tasks_may_clean_up(supervisor, db, tmp_path):
    from tsapp import tasks

    extra = '\n[task_timeouts]\n"tsapp.tasks.cleanup_on_timeout" = "500ms"\n'
    supervisor(config_toml(ONE_POOL + 'timeout = "1m"\n' + extra))
    marker = tmp_path / "cleaned"
    result = tasks.cleanup_on_timeout.enqueue(30, str(marker))
    failed = wait_finished(result)
    assert failed.exception_class_path == TIMEOUT_CLASS
    assert marker.read_text() == "cleaned up"


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb-rr"], indirect=True)
def test_a_task_that_swallows_the_timeout_is_killed(supervisor, db, tmp_path):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL + 'timeout = "1s"\nkill_after = "1s"\n'))
    marker, wait_started = started(tmp_path)
    result = tasks.stubborn.enqueue(60, str(marker))
    wait_started()
    failed = wait_finished(result)
    assert failed.exception_class_path == TIMEOUT_CLASS
    assert "did not stop within kill_after 1s" in failed.traceback and "was killed" in failed.traceback
    assert Path(str(marker) + ".caught").exists()
    assert sup.has_event(events.TASK_TIMEOUT_KILL, task_id=str(result.id))
    sup.wait_event(events.CHILD_STARTED, pool="default", slot=0, count=2)
    after = tasks.add.enqueue(2, 2)
    wait_status(after, "SUCCESSFUL")


def test_segfault_is_recorded_as_worker_lost(supervisor, db):
    from tsapp import tasks

    supervisor(config_toml(ONE_POOL))
    failed = wait_finished(tasks.segfault.enqueue())
    assert failed.exception_class_path == LOST_CLASS
    assert "killed by SIGSEGV" in failed.traceback


def test_os_exit_is_recorded_as_worker_lost(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL))
    failed = wait_finished(tasks.exit_process.enqueue(3))
    assert failed.exception_class_path == LOST_CLASS
    assert "exited with code 3" in failed.traceback
    sup.wait_event(events.CHILD_STARTED, pool="default", slot=0, count=2)
    wait_status(tasks.add.enqueue(1, 2), "SUCCESSFUL")


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb"], indirect=True)
def test_kill_9_with_fail_policy(supervisor, db, tmp_path):
    from tsapp import tasks

    supervisor(config_toml(ONE_POOL))
    marker, wait_started = started(tmp_path)
    result = tasks.sleep.enqueue(60, str(marker))
    wait_started()
    os.kill(int(marker.read_text()), signal.SIGKILL)
    failed = wait_finished(result)
    assert failed.exception_class_path == LOST_CLASS
    assert "killed by SIGKILL" in failed.traceback and "max_memory" in failed.traceback


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb-rr"], indirect=True)
def test_kill_9_with_requeue_policy_runs_the_task_again(supervisor, db, tmp_path):
    from tsapp import tasks

    supervisor(config_toml(ONE_POOL + 'on_worker_lost = "requeue"\n'))
    marker, wait_started = started(tmp_path)
    result = tasks.sleep.enqueue(0.5, str(marker))
    wait_started()
    pid = int(marker.read_text())
    marker.unlink()
    os.kill(pid, signal.SIGKILL)
    done = wait_finished(result, "SUCCESSFUL")
    first, second = (WorkerId.parse(w) for w in done.worker_ids)  # the same slot, a new generation
    assert (first.slot, second.slot) == (0, 0) and second.generation > first.generation


def test_requeue_stops_at_max_attempts(supervisor, db, tmp_path):
    from tsapp import tasks

    supervisor(config_toml(ONE_POOL + 'on_worker_lost = "requeue"\nmax_attempts = 2\n'))
    marker, wait_started = started(tmp_path)
    result = tasks.sleep.enqueue(60, str(marker))
    for _ in range(2):
        wait_started()
        pid = int(marker.read_text())
        marker.unlink()
        os.kill(pid, signal.SIGKILL)
    failed = wait_finished(result)
    assert failed.exception_class_path == LOST_CLASS
    assert "2 of max_attempts 2 attempts used" in failed.traceback
    assert len(failed.worker_ids) == 2


def test_a_child_past_max_memory_is_recycled_after_its_task(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL + 'max_memory = "150MiB"\n'))
    result = tasks.leak.enqueue(200, hold_seconds=2.5)
    wait_status(result, "SUCCESSFUL")
    first = sup.wait_event(events.CHILD_OVER_MEMORY, pool="default", slot=0)
    sup.wait_event(events.CHILD_RECYCLE_MEMORY, pid=first["pid"])
    sup.wait_event(events.CHILD_STOPPED, pid=first["pid"])
    sup.wait_event(events.CHILD_STARTED, pool="default", slot=0, count=2)
    assert not sup.has_event(events.CHILD_KILLED)  # its task finished and it left in time
    wait_status(tasks.add.enqueue(1, 1), "SUCCESSFUL")


def fake_running(worker_id: str):
    """A row some worker claimed and never finished."""
    from tsapp import tasks

    result = tasks.noop.enqueue()
    rows().filter(id=result.id).update(status="RUNNING", worker_ids=[worker_id])
    return result


def test_rows_left_by_an_earlier_run_of_this_node_are_recovered_at_startup(supervisor, db):
    mine = fake_running("testnode:default:0:7")
    other = fake_running("elsewhere:default:0:1")
    supervisor(config_toml(ONE_POOL))
    failed = wait_finished(mine)
    assert failed.exception_class_path == LOST_CLASS
    assert "was gone when its supervisor restarted on node testnode" in failed.traceback
    assert row(other).status == "RUNNING"  # not ours, and no stale heartbeat says it is dead


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb"], indirect=True)
def test_a_restarted_supervisor_recovers_what_a_killed_one_left(supervisor, db, tmp_path):
    from tsapp import tasks

    first = supervisor(config_toml(ONE_POOL))
    marker, wait_started = started(tmp_path)
    result = tasks.sleep.enqueue(60, str(marker))
    wait_started()
    first.signal(signal.SIGKILL)
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the pod is gone, child and all
    first.wait_exit()
    assert row(result).status == "RUNNING"
    second = supervisor(config_toml(ONE_POOL))
    failed = wait_finished(result)
    assert failed.exception_class_path == LOST_CLASS
    assert "gone when its supervisor restarted" in failed.traceback
    assert second.has_event(events.TASK_LOST_HANDLED, task_id=str(result.id), status="FAILED")


def stale_heartbeat(node: str) -> None:
    from django.utils import timezone

    from task_supervisor.models import NodeHeartbeat

    old = timezone.now() - datetime.timedelta(minutes=10)
    NodeHeartbeat.objects.create(node=node, pid=1, pools=["default"], started_at=old, last_seen=old)


def test_running_rows_of_a_dead_node_are_recovered(supervisor, db):
    from task_supervisor.models import NodeHeartbeat

    stale_heartbeat("ghost")
    lost = fake_running("ghost:default:0:1")
    sup = supervisor(config_toml(ONE_POOL, extra='node_timeout = "10s"'))
    failed = wait_finished(lost)
    assert failed.exception_class_path == LOST_CLASS
    assert "belonged to node ghost" in failed.traceback
    wait_until(lambda: not NodeHeartbeat.objects.filter(node="ghost").exists(), message="ghost forgotten")
    assert NodeHeartbeat.objects.filter(node="testnode").exists()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == exitcodes.EX_OK
    assert not NodeHeartbeat.objects.filter(node="testnode").exists()


@pytest.mark.parametrize("db", ["sqlite", "postgres", "pgbouncer", "mariadb-rr"], indirect=True)
def test_two_supervisors_racing_for_a_dead_node_handle_each_row_once(supervisor, db):
    stale_heartbeat("ghost")
    lost = [fake_running(f"ghost:default:{i}:1") for i in range(20)]
    text = ONE_POOL.replace('interval = "100ms"', 'queues = ["nothing"]')
    a = supervisor(config_toml(text, node="node-a", extra='node_timeout = "10s"'))
    b = supervisor(config_toml(text, node="node-b", extra='node_timeout = "10s"'))
    for result in lost:
        wait_finished(result)
    handled = [r["task_id"] for sup in (a, b) for r in sup.events(events.TASK_LOST_HANDLED, status="FAILED")]
    assert sorted(handled) == sorted(str(r.id) for r in lost), (a.tail(), b.tail())
