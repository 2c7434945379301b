"""Workflows on SQLite and PostgreSQL, in-process: enqueueing, the hand-over from task rows'
verdicts (written here by hand, as db_worker would), its idempotence, failures, the sweep's
judgement of failures, cancelling, and bad input writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from task_supervisor.workflows import WorkflowError, chain, chord, group, handover, step
from task_supervisor.workflows import ops as wops
from task_supervisor.workflows.shapes import ON_ERROR


def tasks_model():
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult


def backend():
    from task_supervisor import compat

    return compat.resolve("default")


def finish(handle, path, value=None, *, status="SUCCESSFUL", exception="", worker="n1:default:0:1"):
    """Write a step's task verdict as db_worker would, then hand over as the child does."""
    from django.utils import timezone

    task_id = handle.step(path).task_id
    assert task_id, f"step {path} is not enqueued"
    tasks_model().objects.filter(id=task_id).update(
        status=status,
        return_value=value,
        exception_class_path=exception,
        traceback=f"{exception}: it broke\n" if exception else "",
        worker_ids=[worker],
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    return handover.advance(backend(), handle.id, failure_is_final=lambda row: True)


def states(handle):
    return {s.path: s.state for s in handle.steps}


def args_of(handle, path):
    return tasks_model().objects.get(id=handle.step(path).task_id).args_kwargs["args"]


def test_a_chain_enqueues_one_step_at_a_time_passing_results(db):
    from tsapp import tasks

    handle = chain(step(tasks.add, 1, 2), step(tasks.add, 10), step(tasks.add, 100)).enqueue(name="sum")
    assert states(handle) == {"0": "ENQUEUED", "1": "PENDING", "2": "PENDING"}
    assert tasks_model().objects.count() == 1
    finish(handle, "0", 3)
    assert args_of(handle, "1") == [3, 10]
    for _ in range(3):  # again and again: nothing more happens
        handover.advance(backend(), handle.id)
    assert tasks_model().objects.count() == 2
    finish(handle, "1", 13)
    finish(handle, "2", 113)
    assert handle.state == "SUCCEEDED" and handle.result == 113
    assert handle.task_result("2").return_value == 113


def test_a_chord_callback_is_enqueued_once_with_results_in_order_whatever_order_members_finish(db):
    from tsapp import tasks

    handle = chord(group(*[step(tasks.add, i, 0) for i in range(4)]), step(tasks.add, 1)).enqueue()
    assert tasks_model().objects.count() == 4
    for i in (2, 0, 3):
        finish(handle, f"0.{i}", i)
        assert states(handle)["1"] == "PENDING"
    finish(handle, "0.1", 1)
    assert args_of(handle, "1") == [[0, 1, 2, 3], 1]
    handover.advance(backend(), handle.id)
    assert tasks_model().objects.count() == 5


def test_a_group_after_a_step_gives_each_member_the_result_and_the_workflow_result_is_the_list(db):
    from tsapp import tasks

    handle = chain(step(tasks.add, 1, 1), group(step(tasks.add, 1), step(tasks.add, 2).immutable())).enqueue()
    finish(handle, "0", 2)
    assert args_of(handle, "1.0") == [2, 1] and args_of(handle, "1.1") == [2]
    finish(handle, "1.0", 3)
    finish(handle, "1.1", 2)
    assert handle.result == [3, 2]


def test_a_failed_step_stops_the_chain_and_the_error_callback_is_enqueued_once(db):
    from tsapp import tasks

    handle = chain(step(tasks.add, 1, 1), step(tasks.add, 1), step(tasks.add, 1)).enqueue(on_error=step(tasks.noop))
    finish(handle, "0", 2)
    assert handover.advance(backend(), handle.id, failure_is_final=lambda row: False) is not None
    finish(handle, "1", status="FAILED", exception="builtins.ValueError")
    assert handle.state == "FAILED"
    assert states(handle) == {"0": "SUCCEEDED", "1": "FAILED", "2": "CANCELLED", ON_ERROR: "ENQUEUED"}
    (told,) = args_of(handle, ON_ERROR)
    assert told["step"] == "1" and told["error"] == "builtins.ValueError: it broke"
    handover.advance(backend(), handle.id, failure_is_final=lambda row: True)
    assert tasks_model().objects.count() == 3  # steps 0 and 1, the error callback: once


def test_a_failure_that_may_still_be_retried_hands_nothing_over(db):
    from tsapp import tasks

    handle = chain(step(tasks.add, 1, 1), step(tasks.add, 1)).enqueue()
    tasks_model().objects.filter(id=handle.step("0").task_id).update(status="FAILED")
    handover.advance(backend(), handle.id)  # never_final: a retry may come
    assert states(handle) == {"0": "ENQUEUED", "1": "PENDING"} and handle.state == "RUNNING"


def test_a_step_whose_task_row_is_gone_fails_the_workflow(db):
    from tsapp import tasks

    handle = chain(step(tasks.noop), step(tasks.noop)).enqueue()
    tasks_model().objects.all().delete()
    handover.advance(backend(), handle.id)
    assert handle.state == "FAILED" and "is gone" in handle.step("0").error


def test_the_sweep_judges_failures_by_the_retry_policies_and_completes_hand_overs(db):
    from tsapp import tasks

    from task_supervisor.chores.workflowsweep import WorkflowSweep
    from task_supervisor.config import config_from_dict
    from task_supervisor.observe.stats import Stats

    config = config_from_dict(
        {
            "django": {"settings": "s"},
            "pools": {"default": {}},
            "retries": {"tsapp.tasks.fail": {"max_attempts": 2, "on": ["ValueError"]}},
        },
        Path("config.toml"),
    )
    stats = Stats()
    sweep = WorkflowSweep(config, lambda: 0.0, stats)
    retried = chain(step(tasks.fail), step(tasks.noop)).enqueue()
    done = chain(step(tasks.noop), step(tasks.noop)).enqueue()
    row = tasks_model().objects.filter(id=retried.step("0").task_id)
    row.update(status="FAILED", exception_class_path="builtins.ValueError", worker_ids=["n:default:0:1"])
    tasks_model().objects.filter(id=done.step("0").task_id).update(status="SUCCESSFUL", return_value=None)
    sweep.tick(0.0, [backend()])
    assert done.state == "RUNNING" and states(done)["1"] == "ENQUEUED"  # the child's hand-over, done by the sweep
    assert retried.state == "RUNNING"  # attempt 1 of 2: a retry is coming
    row.update(worker_ids=["n:default:0:1", "n:default:0:2"])
    sweep.tick(10.0, [backend()])
    assert retried.state == "FAILED" and states(retried)["1"] == "CANCELLED"
    sweep.tick(20.0, [backend()])  # counted at the start of a sweep, every COUNT_INTERVAL
    assert stats.workflows == {"RUNNING": 1, "SUCCEEDED": 0, "FAILED": 1, "CANCELLED": 0}
    assert stats.workflow_sweeps["handed_over"] == 2


def test_cancel_stops_what_is_enqueued_and_nothing_more_is_enqueued(db):
    from tsapp import tasks

    from task_supervisor.models import Action

    handle = chain(group(step(tasks.noop), step(tasks.noop)), step(tasks.noop)).enqueue(on_error=step(tasks.noop))
    out = wops.cancel(handle.id, actor="alice")
    assert out.count == 4 and handle.state == "CANCELLED"  # 2 steps that will not run, 2 tasks stopped
    assert states(handle) == {"0.0": "ENQUEUED", "0.1": "ENQUEUED", "1": "CANCELLED", ON_ERROR: "CANCELLED"}
    assert set(tasks_model().objects.values_list("status", flat=True)) == {"FAILED"}
    handover.advance(backend(), handle.id, failure_is_final=lambda row: True)
    assert states(handle) == {"0.0": "FAILED", "0.1": "FAILED", "1": "CANCELLED", ON_ERROR: "CANCELLED"}
    assert tasks_model().objects.count() == 2
    assert "workflow-cancel" in set(Action.objects.values_list("verb", flat=True))
    assert "already CANCELLED" in wops.cancel(handle.id, actor="alice").message
    shown = wops.show(handle.id)
    assert [r["step"] for r in shown.rows] == ["0.0", "0.1", "1", ON_ERROR]
    assert wops.list_workflows(state="CANCELLED").rows[0]["id"] == handle.id


def test_bad_input_fails_at_enqueue_and_writes_nothing(db):
    import datetime

    from tsapp import tasks

    from task_supervisor.models import Workflow, WorkflowStep

    with pytest.raises(WorkflowError, match="not JSON"):
        chain(step(tasks.noop), step(tasks.add, datetime.datetime.now(), 1)).enqueue()
    with pytest.raises(WorkflowError, match="on_error takes a step"):
        chain(step(tasks.noop), step(tasks.noop)).enqueue(on_error=tasks.noop)
    with pytest.raises(wops.OperationError, match="No workflow has id"):
        wops.cancel("not-a-uuid", actor="a")
    assert not Workflow.objects.exists() and not WorkflowStep.objects.exists()
    assert not tasks_model().objects.exists()


def test_a_workflow_enqueued_in_a_transaction_that_rolls_back_leaves_nothing(db):
    from django.db import transaction
    from tsapp import tasks

    from task_supervisor.models import Workflow

    with pytest.raises(RuntimeError), transaction.atomic():
        chain(step(tasks.noop), step(tasks.noop)).enqueue()
        raise RuntimeError("the view failed")
    assert not Workflow.objects.exists() and not tasks_model().objects.exists()


def test_the_childs_fast_path_hands_over_after_a_success_only_and_never_raises(db, monkeypatch, caplog):
    from types import SimpleNamespace

    from django.utils import timezone
    from tsapp import tasks

    from task_supervisor import events
    from task_supervisor.worker.steps import StepHandOver

    handle = chain(step(tasks.add, 1, 2), step(tasks.add, 10)).enqueue()
    task_id = handle.step("0").task_id
    fast = StepHandOver(backend(), clock=lambda: 0.0)
    tasks_model().objects.filter(id=task_id).update(status="FAILED", finished_at=timezone.now())
    fast.finished(None, SimpleNamespace(id=task_id, status="FAILED"))
    assert states(handle) == {"0": "ENQUEUED", "1": "PENDING"}  # failures are the sweep's
    tasks_model().objects.filter(id=task_id).update(status="SUCCESSFUL", return_value=3)
    fast.finished(None, SimpleNamespace(id=task_id, status="SUCCESSFUL"))
    assert states(handle) == {"0": "SUCCEEDED", "1": "ENQUEUED"} and args_of(handle, "1") == [3, 10]

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(handover, "advance", broken)
    fast.finished(None, SimpleNamespace(id=handle.step("1").task_id, status="SUCCESSFUL"))
    assert [r for r in caplog.records if getattr(r, "event", "") == events.WORKFLOW_HANDOVER_FAILED]


def test_the_sweep_is_bounded_and_its_cursor_reaches_every_workflow(db, monkeypatch):
    from tsapp import tasks

    from task_supervisor.chores import workflowsweep
    from task_supervisor.config import config_from_dict
    from task_supervisor.observe.stats import Stats

    monkeypatch.setattr(workflowsweep, "STEPS_PER_SWEEP", 3)
    monkeypatch.setattr(workflowsweep, "WORKFLOWS_PER_SWEEP", 1)
    config = config_from_dict({"django": {"settings": "s"}, "pools": {"default": {}}}, Path("config.toml"))
    clock = [0.0]
    sweep = workflowsweep.WorkflowSweep(config, lambda: clock[0], Stats())
    handles = [group(step(tasks.noop), step(tasks.noop)).enqueue() for _ in range(4)]
    tasks_model().objects.update(status="SUCCESSFUL")
    turns = 0
    while any(h.state == "RUNNING" for h in handles):
        turns += 1
        assert turns <= 12, [h.state for h in handles]
        before = sum(h.state != "RUNNING" for h in handles)
        sweep.tick(clock[0], [backend()])
        assert sum(h.state != "RUNNING" for h in handles) - before <= 1  # one workflow per sweep
        clock[0] = sweep.next_due()


def test_a_workflow_enqueued_just_after_the_childs_look_is_handed_over_at_its_next_look(db):
    from types import SimpleNamespace

    from tsapp import tasks

    from task_supervisor.worker.steps import CHECK_EVERY, StepHandOver

    clock = [0.0]
    fast = StepHandOver(backend(), clock=lambda: clock[0])
    other = tasks.noop.enqueue()
    tasks_model().objects.filter(id=other.id).update(status="SUCCESSFUL")
    fast.finished(None, SimpleNamespace(id=other.id, status="SUCCESSFUL"))  # a look: no workflow
    assert fast.unchecked == []
    handle = chain(step(tasks.add, 1, 2), step(tasks.add, 10)).enqueue()  # just after that look
    tasks_model().objects.filter(id=handle.step("0").task_id).update(status="SUCCESSFUL", return_value=3)
    fast.finished(None, SimpleNamespace(id=handle.step("0").task_id, status="SUCCESSFUL"))
    assert states(handle) == {"0": "ENQUEUED", "1": "PENDING"} and fast.unchecked  # kept, not looked up
    clock[0] += CHECK_EVERY
    fast.finished(None, SimpleNamespace(id=other.id, status="SUCCESSFUL"))  # the next look finds it
    assert states(handle) == {"0": "SUCCEEDED", "1": "ENQUEUED"} and fast.unchecked == []
