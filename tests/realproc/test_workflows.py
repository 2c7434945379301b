"""Workflows end to end on SQLite and PostgreSQL: real supervisors, real children, the hand-over
from step to step (a child's fast path, the janitor's sweep for failures), cancel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from task_supervisor import exitcodes
from task_supervisor.workflows import chain, chord, group, step
from task_supervisor.workflows import ops as wops
from task_supervisor.workflows.shapes import ON_ERROR
from tests.support import config_toml, wait_until

TWO = """
[pools.default]
processes = 3
interval = "100ms"
"""
DEADLINE = 60.0  # seconds: a busy two-core machine, SQLite's polling


def finished(sup, handle, timeout: float = DEADLINE) -> str:
    return wait_until(
        lambda: (state := handle.state) != "RUNNING" and state,
        timeout,
        0.1,
        message=lambda: f"workflow {handle.id} to finish: {handle.steps}; the log ends:\n{sup.tail()}",
    )


def task_rows():
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects


def test_a_chain_passes_each_result_on_and_a_group_runs_in_parallel(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO))
    handle = chain(step(tasks.add, 1, 2), step(tasks.add, 10), step(tasks.add, 100)).enqueue(name="sum")
    parallel = group(step(tasks.slow_add, 1, 0, 1.5), step(tasks.slow_add, 2, 0, 1.5)).enqueue()
    assert finished(sup, handle) == "SUCCEEDED" and handle.result == 113
    assert [s.result for s in handle.steps] == [3, 13, 113]
    assert finished(sup, parallel) == "SUCCEEDED" and parallel.result == [1, 2]
    a, b = (task_rows().get(id=s.task_id) for s in parallel.steps)
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # they overlapped
    assert task_rows().count() == 5


def test_a_chord_callback_runs_once_with_every_result_in_order(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO))
    members = [step(tasks.slow_add, i, 0, 0.05 * ((7 * i) % 5)) for i in range(10)]  # finish out of order
    handle = chord(group(*members), step(tasks.total, 1000)).enqueue()
    assert finished(sup, handle) == "SUCCEEDED" and handle.result == 1045
    callback = task_rows().get(id=handle.step("1").task_id)
    assert callback.args_kwargs["args"] == [list(range(10)), 1000]
    assert task_rows().filter(task_path="tsapp.tasks.total").count() == 1


def test_a_chord_inside_a_chain_with_a_chain_inside_its_group(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO))
    shape = chain(
        step(tasks.add, 1, 1),  # 2
        chord([chain(step(tasks.add, 1), step(tasks.add, 2)), step(tasks.add, 3)], step(tasks.total)),  # [5, 5]
        step(tasks.add, 1000),
    )
    handle = shape.enqueue()
    assert finished(sup, handle) == "SUCCEEDED" and handle.result == 1010
    assert task_rows().count() == 6


def test_a_failing_step_stops_its_chain_and_fires_the_error_callback_once(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO))
    handle = chain(step(tasks.add, 1, 1), step(tasks.fail, "no").immutable(), step(tasks.add, 1)).enqueue(
        on_error=step(tasks.echo)
    )
    assert finished(sup, handle) == "FAILED"
    states = {s.path: s.state for s in handle.steps}
    assert states["0"] == "SUCCEEDED" and states["1"] == "FAILED" and states["2"] == "CANCELLED"
    assert handle.step("2").task_id == ""
    wait_until(lambda: handle.step(ON_ERROR).state == "SUCCEEDED", DEADLINE, 0.1, message=sup.tail)
    told = handle.step(ON_ERROR).result
    assert told["step"] == "1" and told["workflow"] == handle.id and told["error"] == "builtins.ValueError: no"
    assert task_rows().filter(task_path="tsapp.tasks.echo").count() == 1
    assert task_rows().filter(task_path="tsapp.tasks.add").count() == 1


def test_cancel_stops_the_running_step_and_nothing_after_it_is_enqueued(supervisor, db, tmp_path):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO))
    marker = str(tmp_path / "started")
    handle = chain(step(tasks.sleep, 60, marker), step(tasks.noop)).enqueue(on_error=step(tasks.echo))
    wait_until(lambda: (tmp_path / "started").exists(), DEADLINE, message=sup.tail)
    wops.cancel(handle.id, actor="test")
    assert handle.state == "CANCELLED"
    wait_until(lambda: handle.step("0").state == "FAILED", DEADLINE, 0.1, message=sup.tail)
    assert "TaskCancelled" in handle.step("0").error
    assert {s.path: s.state for s in handle.steps} == {"0": "FAILED", "1": "CANCELLED", ON_ERROR: "CANCELLED"}
    assert task_rows().count() == 1


def test_a_child_dying_between_a_steps_verdict_and_its_hand_over_is_covered_by_the_sweep(supervisor, db, tmp_path):
    from tsapp import tasks

    from task_supervisor import events

    sup = supervisor(config_toml(TWO))
    marker = tmp_path / "died"
    handle = chain(step(tasks.die_after_verdict, str(marker), 5), step(tasks.add, 1)).enqueue()
    assert finished(sup, handle) == "SUCCEEDED" and handle.result == 6
    assert marker.exists()  # the child died right after the verdict, before handing over
    handed = sup.wait_event(events.WORKFLOW_STEP_ENQUEUED, workflow_id=handle.id, step="1")
    assert handed["pid"] == sup.pid  # the supervisor's sweep enqueued the next step, not a child
    assert task_rows().count() == 2


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_status_and_metrics_count_workflows_by_state(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(TWO))
    handle = chain(step(tasks.add, 1, 2), step(tasks.fail).immutable()).enqueue()
    assert finished(sup, handle) == "FAILED"
    wait_until(lambda: (sup.status().get("workflows") or {}).get("FAILED") == 1, DEADLINE, 0.2, message=sup.tail)
    listed = cli(sup, "workflows", "--state", "FAILED", "--json")
    assert [r["id"] for r in listed["rows"]] == [handle.id]
    shown = cli(sup, "workflows", "show", handle.id, "--json")
    assert [(r["step"], r["state"]) for r in shown["rows"]] == [("0", "SUCCEEDED"), ("1", "FAILED")]
    assert shown["rows"][1]["error"].startswith("builtins.ValueError")
    refused = run_cli(sup, "workflows", "cancel", "no-such-id")
    assert refused.returncode == exitcodes.EX_REFUSED and "No workflow has id 'no-such-id'" in refused.stderr


def run_cli(sup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "task_supervisor", *args, "-c", str(sup.config_path)],
        env=sup.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli(sup, *args: str) -> dict:
    out = run_cli(sup, *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_two_nodes_share_chords_and_each_callback_is_enqueued_once(supervisor, db):
    """Members of one chord finish on both nodes; the callback is enqueued once, by whichever
    hand-over counts the last member under the workflow row's lock."""
    from tsapp import tasks

    nodes = [supervisor(config_toml(TWO, node=name)) for name in ("node-a", "node-b")]
    handles = [
        chord(group(*[step(tasks.slow_add, i, k, 0.02 * (k % 3)) for k in range(10)]), step(tasks.total)).enqueue()
        for i in range(20)
    ]
    for i, handle in enumerate(handles):
        assert finished(nodes[0], handle) == "SUCCEEDED" and handle.result == 10 * i + 45
    assert task_rows().filter(task_path="tsapp.tasks.total").count() == len(handles)
    ran_on = {ids[-1].split(":")[0] for ids in task_rows().values_list("worker_ids", flat=True)}
    assert ran_on == {"node-a", "node-b"}
