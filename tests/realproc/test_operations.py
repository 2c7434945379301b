"""Operating a cluster with real supervisors on SQLite and PostgreSQL: a cancel reaches the node
running the task, a pause holds on every node and a resume is picked up at once, schedules are
switched off at run time, the CLI refuses bad input, and retention prunes 100,000 rows while
/livez keeps answering."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from task_supervisor import events, exitcodes, ops
from task_supervisor.chores import retention
from tests.realproc.test_lost_tasks import row, wait_finished
from tests.realproc.test_observe import free_port, get
from tests.realproc.test_supervision import rows, status_of
from tests.support import config_toml, wait_until

TWO_QUEUES = """
[pools.default]
processes = 1
queues = ["default", "reports"]
interval = "100ms"
"""
CANCELLED = "task_supervisor.TaskCancelled"


def test_a_task_running_on_the_other_node_is_cancelled(supervisor, db, tmp_path):
    from tsapp import tasks

    nodes = [supervisor(config_toml(TWO_QUEUES, node=name)) for name in ("alpha", "beta")]
    for sup in nodes:
        sup.wait_event(events.CHILD_READY)
    marker = tmp_path / "started"
    result = tasks.sleep.enqueue(60, str(marker))
    wait_until(marker.exists, 20, message="the task to start")
    owner = row(result).worker_ids[-1].split(":")[0]
    sup = nodes[0] if owner == "alpha" else nodes[1]
    asked = time.monotonic()
    outcome = ops.cancel([str(result.id)], actor="tester")
    assert outcome.count == 1
    done = wait_finished(result, "FAILED", timeout=10)
    took = time.monotonic() - asked
    assert done.exception_class_path == CANCELLED
    assert took < (3.0 if db.engine == "postgres" else 5.0), took
    print(f"cancel of a running task on {db.engine}: FAILED {took:.2f}s after ops.cancel")
    sup.wait_event(events.TASK_CANCEL_SENT, task_id=str(result.id))
    assert not sup.has_event(events.TASK_CANCEL_KILL)
    # Never retried, and cancelling it again changes nothing.
    assert "already finished" in ops.cancel([str(result.id)]).message
    time.sleep(0.5)
    assert status_of(result) == "FAILED" and len(row(result).worker_ids) == 1


def test_a_cancelled_task_that_does_not_stop_is_killed_kill_after_later(supervisor, db, tmp_path):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO_QUEUES + 'kill_after = "1s"\n'))
    sup.wait_event(events.CHILD_READY)
    marker = tmp_path / "started"
    result = tasks.stubborn.enqueue(60, str(marker))  # catches TaskCancelled and sleeps on
    wait_until(marker.exists, 20, message="the task to start")
    asked = time.monotonic()
    ops.cancel([str(result.id)], actor="tester")
    done = wait_finished(result, "FAILED", timeout=15)
    took = time.monotonic() - asked
    assert done.exception_class_path == CANCELLED, done.traceback
    assert Path(str(marker) + ".caught").exists()  # it was told, and did not stop
    sup.wait_event(events.TASK_CANCEL_SENT, task_id=str(result.id))
    sup.wait_event(events.TASK_CANCEL_KILL, task_id=str(result.id))
    assert took >= 1.0, took  # not before kill_after
    print(f"cancelled task that swallowed TaskCancelled on {db.engine}: killed, FAILED {took:.2f}s after ops.cancel")
    sup.wait_event(events.CHILD_STARTED, pool="default", slot=0, count=2)  # its slot refilled
    wait_finished(tasks.add.enqueue(2, 2), "SUCCESSFUL", timeout=15)
    assert status_of(result) == "FAILED" and len(row(result).worker_ids) == 1  # never retried


def test_a_pause_holds_on_both_nodes_and_a_resume_is_picked_up_at_once(supervisor, db):
    from tsapp import tasks

    port = free_port()
    observed = config_toml(TWO_QUEUES, node="alpha").replace('http = ""', f'http = "127.0.0.1:{port}"')
    nodes = [supervisor(observed), supervisor(config_toml(TWO_QUEUES, node="beta"))]
    for sup in nodes:
        sup.wait_event(events.CHILD_READY)
    ops.pause(["reports"], actor="tester", known_queues={"default", "reports"})
    time.sleep(0.8)  # rowguard's PAUSES_TTL (0.5 s), and a claim already under way
    reports = [tasks.report.enqueue(n) for n in range(4)]
    other = tasks.noop.enqueue()
    wait_finished(other, "SUCCESSFUL", timeout=10)
    time.sleep(1.0)  # both nodes polled many times (interval 100 ms) and claimed none
    assert all(status_of(r) == "READY" for r in reports)
    listing = {q["queue"]: q for q in ops.queues(known_queues={"default", "reports"}).rows}
    assert listing["reports"]["paused"] and listing["reports"]["ready"] == 4
    wait_until(
        lambda: 'task_supervisor_queue_paused{queue="reports"} 1.0' in get(port, "/metrics")[1].decode(),
        10,
        message="the pause in /metrics",
    )
    asked = time.monotonic()
    ops.resume(["reports"], actor="tester")
    for result in reports:
        wait_finished(result, "SUCCESSFUL", timeout=10)
    took = time.monotonic() - asked
    assert took < 2.0, took
    print(f"resume on {db.engine}: 4 paused tasks done {took:.2f}s after ops.resume")


def cli(sup, *args: str) -> subprocess.CompletedProcess[str]:
    """``task-supervisor ARGS -c`` the supervisor's config, in its environment (database, schedules)."""
    return subprocess.run(
        [sys.executable, "-m", "task_supervisor", *args, "-c", str(sup.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=sup.env,
    )


SCHEDULES = '{"often": {"task": "tsapp.tasks.noop", "every": "1s"}}'


def test_the_cli_acts_and_refuses_bad_input_and_a_disabled_schedule_stops(supervisor, db, tmp_path):
    from tsapp import tasks

    from task_supervisor.models import Action, ScheduleRun

    sup = supervisor(config_toml(TWO_QUEUES + "\n[scheduler]\nenabled = true\n"), TS_PERIODIC_TASKS=SCHEDULES)
    wait_until(ScheduleRun.objects.exists, 20, message=lambda: f"a slot fired; log:\n{sup.tail()}")
    bad = cli(sup, "pause", "reprots")
    assert bad.returncode == exitcodes.EX_REFUSED
    assert bad.stderr.strip().splitlines()[-1] == (
        "task-supervisor: No pool serves queue 'reprots'. Did you mean 'reports'? Known queues: default, reports."
    )
    assert cli(sup, "cancel", "--task", "tsapp.tasks.nothing").returncode == exitcodes.EX_REFUSED
    assert cli(sup, "schedules", "run", "oftne").returncode == exitcodes.EX_REFUSED
    assert not Action.objects.exists()

    off = cli(sup, "schedules", "disable", "often")
    assert off.returncode == 0, off.stderr
    time.sleep(1.5)  # the scheduler reads overrides every second
    fired = ScheduleRun.objects.filter(manual=False).count()
    time.sleep(2.5)
    assert ScheduleRun.objects.filter(manual=False).count() == fired
    listing = cli(sup, "schedules", "--json")
    assert '"enabled": false' in listing.stdout and '"by": ' in listing.stdout
    wait_until(lambda: "(disabled at run time)" in cli(sup, "status").stdout, 10, message="the override in status")
    now = cli(sup, "schedules", "run", "often")
    assert now.returncode == 0, now.stderr
    assert ScheduleRun.objects.filter(manual=True).count() == 1
    assert cli(sup, "schedules", "enable", "often").returncode == 0
    wait_until(lambda: ScheduleRun.objects.filter(manual=False).count() > fired, 10, message="slots again")
    assert "at run time)" not in cli(sup, "status").stdout  # enabling as settings say clears the override

    failed = tasks.fail.enqueue()
    wait_finished(failed, "FAILED")
    again = cli(sup, "retry", str(failed.id), "--json")
    assert again.returncode == 0, again.stderr
    wait_until(lambda: len(row(failed).worker_ids) == 2 and status_of(failed) == "FAILED", 10, message="retried")
    verbs = [a.verb for a in Action.objects.order_by("at")]
    assert verbs == ["schedule_disable", "schedule_run", "schedule_enable", "retry"]
    assert all("@" in a.actor for a in Action.objects.all())
    assert '"verb": "retry"' in cli(sup, "actions", "--json").stdout


ROWS = 100_000


def insert_finished_rows(count: int) -> None:
    """``count`` SUCCESSFUL rows finished 30 days ago, in one statement."""
    from django.db import connection
    from django_tasks_db.models import DBTaskResult

    table = DBTaskResult._meta.db_table
    columns = (
        "id, status, enqueued_at, started_at, finished_at, args_kwargs, priority, task_path, worker_ids, "
        "queue_name, backend_name, run_after, return_value, exception_class_path, traceback"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT gen_random_uuid(), 'SUCCESSFUL', now() - interval '31 days', "
                "now() - interval '31 days', now() - interval '30 days', '{\"args\": [], \"kwargs\": {}}', 0, "
                "'tsapp.tasks.noop', '[\"old:default:000:1\"]', 'default', 'default', now(), 'null', '', '' "
                "FROM generate_series(1, %s)",
                [count],
            )
        else:
            cursor.execute(
                f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %s) "
                f"INSERT INTO {table} ({columns}) SELECT lower(hex(randomblob(16))), 'SUCCESSFUL', "
                "datetime('now', '-31 days'), datetime('now', '-31 days'), datetime('now', '-30 days'), "
                "'{\"args\": [], \"kwargs\": {}}', 0, 'tsapp.tasks.noop', '[\"old:default:000:1\"]', 'default', "
                "'default', datetime('now'), 'null', '', '' FROM n",
                [count],
            )


def test_retention_prunes_100000_rows_in_batches_while_livez_answers(supervisor, db, tmp_path):
    from tsapp import tasks

    insert_finished_rows(ROWS)
    keep = tasks.sleep.enqueue(0.1)  # finished now: kept
    port = free_port()
    pools = TWO_QUEUES + '\n[retention]\nsuccessful = "7d"\nfailed = "30d"\nschedule_runs = "30d"\n'
    text = config_toml(pools).replace('http = ""', f'http = "127.0.0.1:{port}"')
    sup = supervisor(text)
    sup.wait_event(events.ROWS_PRUNED)
    slowest = 0.0
    deadline = time.monotonic() + 120
    while rows().filter(task_path="tsapp.tasks.noop").exists():
        assert time.monotonic() < deadline, f"still {rows().count()} rows; log:\n{sup.tail()}"
        asked = time.monotonic()
        assert get(port, "/livez")[0] == 200
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(0.05)
    assert slowest < 1.0, slowest
    print(f"retention of {ROWS} rows on {db.engine}: slowest /livez {slowest * 1000:.0f} ms")
    wait_finished(keep, "SUCCESSFUL")
    assert len(sup.events(events.ROWS_PRUNED)) >= ROWS // retention.BATCH  # in batches
    wait_until(
        lambda: f'task_supervisor_pruned_rows_total{{kind="successful"}} {ROWS}.0' in get(port, "/metrics")[1].decode(),
        10,
        message="the pruned rows counted in /metrics",
    )
