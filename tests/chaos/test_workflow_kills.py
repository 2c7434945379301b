"""Workflows under SIGKILL: 200 workflows (chains of 3, some failing with an error callback,
groups of 5, chords of 10, a nested shape) while a random child is killed every few hundred
milliseconds, under on_worker_lost = "requeue", on SQLite and PostgreSQL.

Counted from the rows at the end: every workflow ended in the state it must; every chord callback
has one task row, which got every member's result in order; no step was enqueued twice (the task
rows and the steps' task ids are the same set, one to one); a failing step stopped its chain and
its error callback was enqueued once. A child killed between a step's verdict and the hand-over's
commit leaves the hand-over to the janitor's sweep: the figures say how many it completed.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from task_supervisor.workflows import chain, chord, group, step
from task_supervisor.workflows.shapes import ON_ERROR
from tests.chaos.harness import Figures, http_get, kill, live_children, metric, observed_config, unique_node
from tests.support import wait_until

pytestmark = pytest.mark.xdist_group("cpu")  # CPU-heavy: one at a time under xdist (see Makefile)

KINDS = 4  # chains, groups, chords, nested: 50 workflows of each
EACH = 50
FAILING_EVERY = 5  # one chain in five has a failing middle step and an error callback
CHILDREN = 4
KILL_EVERY = (0.1, 0.5)  # seconds between kills, uniformly drawn
CHAOS_SECONDS = 25.0  # at most this long; the kills stop once every workflow ended
FINISH_WITHIN = 150.0  # seconds for every workflow to end, kills included
WORK = 0.02  # seconds each adding step sleeps, so kills land inside tasks too

POOL = f"""
[pools.default]
processes = {CHILDREN}
interval = "100ms"
on_worker_lost = "requeue"
max_attempts = 50
"""


def shapes(tasks: Any) -> list[tuple[str, int, Any, Any]]:
    """(kind, i, shape, on_error) for each of the 200 workflows."""
    add = tasks.slow_add
    made: list[tuple[str, int, Any, Any]] = []
    for i in range(EACH):
        if i % FAILING_EVERY == 0:
            failing = chain(step(add, i, 1, WORK), step(tasks.fail, "no").immutable(), step(add, 1, WORK))
            made.append(("failing", i, failing, step(tasks.echo)))
        else:
            made.append(("chain", i, chain(step(add, i, 1, WORK), step(add, 2, WORK), step(add, 3, WORK)), None))
        made.append(("group", i, group(*[step(add, i, k, WORK) for k in range(5)]), None))
        members = group(*[step(add, i, k, WORK * (k % 3)) for k in range(10)])
        made.append(("chord", i, chord(members, step(tasks.total, i)), None))
        inner = chord([chain(step(add, 1, WORK), step(add, 2, WORK)), step(add, 3, WORK)], step(tasks.total))
        made.append(("nested", i, chain(step(add, i, 1, WORK), inner, step(add, 1000, WORK)), None))
    return made


EXPECTED = {
    "chain": ("SUCCEEDED", lambda i: i + 6),
    "failing": ("FAILED", lambda i: None),
    "group": ("SUCCEEDED", lambda i: [i + k for k in range(5)]),
    "chord": ("SUCCEEDED", lambda i: sum(i + k for k in range(10)) + i),
    "nested": ("SUCCEEDED", lambda i: 2 * (i + 1) + 6 + 1000),
}


def enqueue_all(tasks: Any) -> list[tuple[str, int, Any]]:
    from django.db import transaction

    handles = []
    made = shapes(tasks)
    for start in range(0, len(made), 25):  # one transaction per 25 workflows
        with transaction.atomic():
            for kind, i, shape, on_error in made[start : start + 25]:
                handles.append((kind, i, shape.enqueue(on_error=on_error, name=f"{kind}-{i}")))
    return handles


def running_workflows() -> int:
    from task_supervisor.models import Workflow

    return Workflow.objects.filter(state="RUNNING").count()


def check_steps_enqueued_once() -> int:
    """Every task row is exactly one step's task, and every enqueued step has its own row."""
    from django_tasks_db.models import DBTaskResult

    from task_supervisor.models import WorkflowStep

    step_ids = [t for t in WorkflowStep.objects.exclude(task_result_id="").values_list("task_result_id", flat=True)]
    duplicates = [t for t, n in Counter(step_ids).items() if n > 1]
    assert not duplicates, duplicates
    rows = {str(i) for i in DBTaskResult.objects.values_list("id", flat=True)}
    assert rows == set(step_ids), (len(rows), len(step_ids))
    unfinished = DBTaskResult.objects.exclude(status__in=("SUCCESSFUL", "FAILED")).count()
    assert unfinished == 0
    return len(rows)


def check_workflow(kind: str, i: int, handle: Any) -> None:
    from django_tasks_db.models import DBTaskResult

    state, result = EXPECTED[kind]
    assert handle.state == state, (kind, i, handle.steps)
    steps = {s.path: s for s in handle.steps}
    if kind == "failing":
        assert steps["1"].state == "FAILED" and steps["2"].state == "CANCELLED" and steps["2"].task_id == ""
        assert steps[ON_ERROR].task_id, (i, steps)  # enqueued: once, as the unique rows above prove
        return
    assert handle.result == result(i), (kind, i, handle.steps)
    if kind == "chord":
        callback = DBTaskResult.objects.get(id=steps["1"].task_id)
        assert callback.args_kwargs["args"] == [[i + k for k in range(10)], i]
        assert callback.status == "SUCCESSFUL" and callback.return_value == result(i)


def test_random_kills_under_requeue_end_every_workflow_and_enqueue_each_step_once(supervisor, db, tmp_path):
    from tsapp import tasks

    began = time.monotonic()
    handles = enqueue_all(tasks)
    cfg = observed_config(POOL, tmp_path, unique_node("wf"))
    sup = supervisor(cfg.text)
    rng = random.Random(18)
    killed: list[int] = []
    chaos_start = time.monotonic()
    next_kill = chaos_start
    while time.monotonic() - chaos_start < CHAOS_SECONDS and running_workflows():
        if time.monotonic() >= next_kill:
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
            children = live_children(sup)
            if children and kill(victim := rng.choice(children).pid):
                killed.append(victim)
        time.sleep(0.02)  # pacing the faults, not waiting for a state
    chaos_seconds = time.monotonic() - chaos_start
    wait_until(
        lambda: running_workflows() == 0,
        FINISH_WITHIN,
        0.2,
        message=lambda: f"{running_workflows()} workflows still RUNNING; the log ends:\n{sup.tail()}",
    )
    rows = check_steps_enqueued_once()
    for kind, i, handle in handles:
        check_workflow(kind, i, handle)
    from django_tasks_db.models import DBTaskResult

    assert DBTaskResult.objects.filter(task_path="tsapp.tasks.echo").count() == EACH // FAILING_EVERY
    assert DBTaskResult.objects.filter(task_path="tsapp.tasks.total").count() == 2 * EACH
    assert len(killed) >= 3, "the chaos must have hit children"
    metrics = http_get(cfg.port, "/metrics")[1].decode()
    claims = [len(ids) for ids in DBTaskResult.objects.values_list("worker_ids", flat=True)]
    callbacks_rerun = sum(
        len(ids) > 1
        for ids in DBTaskResult.objects.filter(task_path="tsapp.tasks.total").values_list("worker_ids", flat=True)
    )
    Figures(
        test="workflows, child kills, requeue",
        database=db.engine,
        tasks=rows,
        children_killed=len(killed),
        faults=[f"SIGKILL a random child every {KILL_EVERY[0]}-{KILL_EVERY[1]}s for {chaos_seconds:.1f}s"],
        seconds=time.monotonic() - began,
        notes={
            "workflows": len(handles),
            # at-least-once execution under "requeue": a row claimed again after its child died
            "rows_claimed_again": sum(n > 1 for n in claims),
            "callbacks_claimed_again": callbacks_rerun,
            "sweep_hand_overs": metric(metrics, "task_supervisor_workflow_sweeps_total", outcome="handed_over"),
        },
    ).report()
