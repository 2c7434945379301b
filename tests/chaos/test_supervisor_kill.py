"""The supervisor SIGKILLed under load: its children follow it, and the next one on the node recovers.

Two pools share the node: ``default`` fails lost tasks, ``again`` requeues them.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from task_supervisor import events
from tests.chaos.harness import (
    LOST_CLASS,
    Figures,
    kill,
    live_children,
    rows,
    status_counts,
    unique_node,
    wait_all_finished,
    wait_gone,
)
from tests.support import Database, config_toml, wait_until

POOLS = """
[pools.default]
processes = 2
interval = "100ms"
on_worker_lost = "fail"

[pools.again]
queues = ["again"]
processes = 2
interval = "100ms"
on_worker_lost = "requeue"
max_attempts = 5
"""
QUEUES = ("default", "again")
SHORT_TASKS = 100  # per queue and stage
SHORT_SECONDS = 0.02
LONG_SECONDS = 4.0  # long enough to be killed mid-run, short enough to run again
CHILDREN_GONE_WITHIN = 10.0  # seconds: PDEATHSIG, then the current (short) task finishes


def enqueue_short(count: int) -> None:
    from tsapp import tasks

    for _ in range(count):
        for queue in QUEUES:
            tasks.sleep.using(queue_name=queue).enqueue(SHORT_SECONDS)


def enqueue_long(tmp_path: Path) -> dict[str, tuple[str, Path]]:
    """Two long tasks per queue; task id -> (queue, marker written when it starts)."""
    from tsapp import tasks

    long: dict[str, tuple[str, Path]] = {}
    for queue in QUEUES:
        for n in range(2):
            marker = tmp_path / f"long-{queue}-{n}"
            result = tasks.sleep.using(queue_name=queue).enqueue(LONG_SECONDS, str(marker))
            long[str(result.id)] = (queue, marker)
    return long


def handled(long: dict[str, tuple[str, Path]]) -> bool:
    """No long task is still RUNNING under the worker that died with the pod."""
    for r in rows().filter(id__in=list(long)).values("status", "worker_ids"):
        if r["status"] == "RUNNING" and len(r["worker_ids"]) == 1:
            return False
    return True


@pytest.mark.timeout(240)
def test_killed_supervisor_children_exit_and_the_next_one_recovers_their_rows(supervisor, db: Database, tmp_path):
    began = time.monotonic()
    text = config_toml(POOLS, node=unique_node())

    # The supervisor alone dies: PDEATHSIG stops its children once their task is done.
    first = supervisor(text)
    first.wait_children(4)
    enqueue_short(SHORT_TASKS)
    wait_until(lambda: status_counts()["SUCCESSFUL"] >= 20, 60, message="the load to be under way")
    orphans = [child.pid for child in live_children(first)]
    first.signal(signal.SIGKILL)
    first.wait_exit()
    children_gone = wait_gone(orphans, CHILDREN_GONE_WITHIN)
    left_by_orphans = set(map(str, rows().filter(status="RUNNING").values_list("id", flat=True)))

    # The pod dies: the supervisor and its children at once, four tasks mid-run.
    second = supervisor(text)
    wait_all_finished(2 * SHORT_TASKS, second)
    long = enqueue_long(tmp_path)
    enqueue_short(SHORT_TASKS)
    wait_until(lambda: all(marker.exists() for _, marker in long.values()), 60, message="the long tasks to start")
    doomed = [child.pid for child in live_children(second)]
    second.signal(signal.SIGKILL)
    for pid in doomed:
        kill(pid)
    second.wait_exit()
    wait_gone(doomed, 10)
    running = set(map(str, rows().filter(status="RUNNING").values_list("id", flat=True)))
    assert running == set(long), (running, long)  # the orphans' rows were recovered by the second one

    # The next supervisor on the node finishes what the dead one left.
    third = supervisor(text)
    restarted = time.monotonic()
    wait_until(lambda: handled(long), 60, message=lambda: f"the dead pod's rows handled; log:\n{third.tail()}")
    recovered = time.monotonic() - restarted
    total = 4 * SHORT_TASKS + len(long)
    wait_all_finished(total, third)
    finished = time.monotonic() - restarted
    third.wait_children(4)

    done = {str(r["id"]): r for r in rows().values("id", "status", "worker_ids", "exception_class_path", "traceback")}
    for task_id, (queue, _) in long.items():
        r = done.pop(task_id)
        if queue == "default":
            assert r["status"] == "FAILED" and r["exception_class_path"] == LOST_CLASS, r
            assert "was gone when its supervisor restarted on node" in r["traceback"], r
            assert len(r["worker_ids"]) == 1, r
        else:
            assert r["status"] == "SUCCESSFUL" and len(r["worker_ids"]) == 2, r
    for task_id, r in done.items():
        if task_id in left_by_orphans:  # claimed by an orphan as PDEATHSIG arrived: recovered like any lost row
            assert r["status"] == "SUCCESSFUL" or r["exception_class_path"] == LOST_CLASS, r
        else:
            assert r["status"] == "SUCCESSFUL" and len(r["worker_ids"]) == 1, r
    outcomes = {r["task_id"]: r["status"] for r in third.events(events.TASK_LOST_HANDLED)}
    assert {task_id: outcomes.get(task_id) for task_id in long} == {
        task_id: "FAILED" if queue == "default" else "READY" for task_id, (queue, _) in long.items()
    }

    Figures(
        test="supervisor SIGKILLed",
        database=db.engine,
        tasks=total,
        children_killed=len(doomed),
        faults=["SIGKILL the supervisor under load", "SIGKILL the supervisor and its children (pod lost)"],
        lost=sum(1 for r in rows().values_list("status", flat=True) if r not in ("SUCCESSFUL", "FAILED")),
        duplicates=sum(1 for r in rows().values_list("worker_ids", flat=True) if len(r) > 1),
        failed_worker_lost=rows().filter(exception_class_path=LOST_CLASS).count(),
        recovery_seconds={
            "children_gone_after_supervisor_kill": children_gone,
            "lost_rows_handled_by_next_supervisor": recovered,
            "next_supervisor_finishes_backlog": finished,
        },
        seconds=time.monotonic() - began,
        notes={"orphans": len(orphans), "rows_left_running_by_orphans": len(left_by_orphans)},
    ).report()
