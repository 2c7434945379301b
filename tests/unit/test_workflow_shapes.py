"""Workflows without a database: building shapes, compiling them into steps, the decisions."""

from __future__ import annotations

import pytest

from task_supervisor.workflows import WorkflowError, chain, chord, group, step
from task_supervisor.workflows.plan import (
    CANCELLED,
    ENQUEUED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    StepView,
    decide,
)
from task_supervisor.workflows.shapes import ON_ERROR, check_json, compile_shape, describe, resolve


@pytest.fixture(scope="module")
def tasks(django_ready):
    from tsapp import tasks

    return tasks


def plans_of(shape, on_error=None):
    plans, output = compile_shape(shape, on_error)
    return {p.path: (p.after, p.receives) for p in plans}, output


def test_a_chain_passes_each_result_to_the_next_step(tasks):
    plans, output = plans_of(chain(step(tasks.add, 1, 2), step(tasks.add, 3), step(tasks.add, 4)))
    assert plans == {
        "0": ((), None),
        "1": (("0",), {"step": "0"}),
        "2": (("1",), {"step": "1"}),
    }
    assert output == {"step": "2"}


def test_an_immutable_step_receives_nothing_but_still_waits(tasks):
    plans, _ = plans_of(chain(step(tasks.noop), step(tasks.add, 1, 2).immutable()))
    assert plans["1"] == (("0",), None)


def test_a_group_runs_in_parallel_and_its_result_is_the_list(tasks):
    plans, output = plans_of(group(step(tasks.noop), step(tasks.noop), step(tasks.noop)))
    assert plans == {"0": ((), None), "1": ((), None), "2": ((), None)}
    assert output == {"list": [{"step": "0"}, {"step": "1"}, {"step": "2"}]}


def test_a_chord_callback_waits_for_every_member_and_receives_their_results_in_order(tasks):
    plans, output = plans_of(chord(group(step(tasks.add, 1, 1), step(tasks.add, 2, 2)), step(tasks.noop)))
    assert plans["1"] == (("0.0", "0.1"), {"list": [{"step": "0.0"}, {"step": "0.1"}]})
    assert output == {"step": "1"}


def test_nesting_a_chord_inside_a_chain_with_a_chain_inside_a_group(tasks):
    shape = chain(
        step(tasks.add, 1, 1),
        chord([chain(step(tasks.add, 1), step(tasks.add, 2)), step(tasks.add, 3)], step(tasks.noop)),
        step(tasks.noop),
    )
    plans, output = plans_of(shape)
    assert plans["1.0.0.0"] == (("0",), {"step": "0"})  # the chain in the group gets the first result
    assert plans["1.0.0.1"] == (("1.0.0.0",), {"step": "1.0.0.0"})
    assert plans["1.0.1"] == (("0",), {"step": "0"})
    assert plans["1.1"] == (("1.0.0.1", "1.0.1"), {"list": [{"step": "1.0.0.1"}, {"step": "1.0.1"}]})
    assert plans["2"] == (("1.1",), {"step": "1.1"})
    assert output == {"step": "2"}
    assert describe(shape)["chain"][1]["chord"]["callback"] == {"step": "tsapp.tasks.noop"}


def test_the_error_callback_is_a_step_of_its_own_that_receives_the_failure(tasks):
    plans, _ = plans_of(step(tasks.noop), on_error=step(tasks.noop))
    assert plans == {"0": ((), None), ON_ERROR: ((), {"error": True})}


def test_resolve_builds_nested_lists_and_the_error():
    results = {"0": 1, "1": [2, 3]}
    assert resolve({"list": [{"step": "0"}, {"list": [{"step": "1"}]}]}, results) == [1, [[2, 3]]]
    assert resolve({"error": True}, results, {"step": "0"}) == {"step": "0"}


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda t: step(lambda: None), "decorate it with @task"),
        (lambda t: step(step(t.noop)), "pass it to chain() or group()"),
        (lambda t: group(), "group() needs at least one step"),
        (lambda t: chain(), "chain() needs at least one step"),
        (lambda t: chain(t.noop), "wrap the task in step(task, ...)"),
        (lambda t: group(step(t.noop), 3), "pass step(), chain(), group() or chord()"),
        (lambda t: chord(step(t.noop), step(t.noop)), "chord() takes a group"),
        (lambda t: compile_shape([step(t.noop)]), "build one with chain(...)"),
        (lambda t: compile_shape(step(t.noop), on_error=t.noop), "use on_error=step(task, ...)"),
    ],
)
def test_bad_shapes_fail_with_one_sentence_saying_how_to_fix_them(tasks, build, words):
    with pytest.raises(WorkflowError, match=r"\.$") as caught:
        build(tasks)
    assert words in str(caught.value)


def test_arguments_that_are_not_json_are_named_with_their_step(tasks):
    import datetime

    plans, _ = compile_shape(chain(step(tasks.noop), step(tasks.add, datetime.date(2026, 1, 1), 1)))
    check_json(plans[0])
    with pytest.raises(WorkflowError, match=r"step 1 \(tsapp.tasks.add\) are not JSON"):
        check_json(plans[1])
    plans, _ = compile_shape(step(tasks.add, float("nan"), 1))
    with pytest.raises(WorkflowError, match="not JSON"):
        check_json(plans[0])


# -- the decisions ----------------------------------------------------------------------------


def views(*rows):
    return [StepView(path, state, tuple(after), i) for i, (path, state, after) in enumerate(rows)]


def test_the_next_link_is_ready_once_its_predecessor_succeeded():
    steps = views(("0", SUCCEEDED, ()), ("1", PENDING, ("0",)), ("2", PENDING, ("1",)))
    decision = decide(RUNNING, steps)
    assert decision.enqueue == ("1",) and decision.workflow_state == RUNNING


def test_a_chord_callback_is_ready_only_after_the_last_member_whatever_the_order():
    for done in [("0.0",), ("0.1",), ("0.2", "0.0")]:
        states = {p: SUCCEEDED if p in done else ENQUEUED for p in ("0.0", "0.1", "0.2")}
        steps = views(*[(p, s, ()) for p, s in states.items()], ("1", PENDING, ("0.0", "0.1", "0.2")))
        assert decide(RUNNING, steps).enqueue == ()
    steps = views(*[(p, SUCCEEDED, ()) for p in ("0.2", "0.0", "0.1")], ("1", PENDING, ("0.0", "0.1", "0.2")))
    assert decide(RUNNING, steps).enqueue == ("1",)


def test_a_failed_step_fails_the_workflow_cancels_what_has_not_started_and_fires_the_error_callback():
    steps = views(("0.0", FAILED, ()), ("0.1", ENQUEUED, ()), ("1", PENDING, ("0.0", "0.1")), (ON_ERROR, PENDING, ()))
    decision = decide(RUNNING, steps)
    assert decision.workflow_state == FAILED and decision.failed_step == "0.0"
    assert decision.cancel == ("1",) and decision.enqueue == (ON_ERROR,)
    # Applied, it decides nothing more: the hand-over is idempotent.
    after = views(("0.0", FAILED, ()), ("0.1", ENQUEUED, ()), ("1", CANCELLED, ()), (ON_ERROR, ENQUEUED, ()))
    assert not decide(FAILED, after).changes(FAILED)


def test_a_workflow_whose_steps_all_succeeded_succeeds_and_skips_its_error_callback():
    decision = decide(RUNNING, views(("0", SUCCEEDED, ()), (ON_ERROR, PENDING, ())))
    assert decision.workflow_state == SUCCEEDED and decision.skip == (ON_ERROR,)
    assert not decide(SUCCEEDED, views(("0", SUCCEEDED, ()), (ON_ERROR, SKIPPED, ()))).changes(SUCCEEDED)


def test_a_cancelled_workflow_never_enqueues_and_never_fires_its_error_callback():
    steps = views(("0", FAILED, ()), ("1", PENDING, ("0",)), (ON_ERROR, PENDING, ()))
    decision = decide(CANCELLED, steps)
    assert decision.workflow_state == CANCELLED and decision.enqueue == ()
    assert decision.cancel == ("1", ON_ERROR)


def test_workflows_by_state_and_the_sweeps_hand_overs_are_prometheus_metrics():
    from task_supervisor.observe.exposition import Metrics
    from task_supervisor.observe.stats import Stats

    stats = Stats()
    stats.workflows = {"RUNNING": 3, "SUCCEEDED": 7, "FAILED": 1, "CANCELLED": 0}
    stats.workflow_sweeps["handed_over"] += 2
    snapshot = {"version": "1", "node": "n", "uptime": 1.0, "pools": [], "database": {"ok": True}}
    body = Metrics(lambda: snapshot, stats).response().body.decode()
    assert 'task_supervisor_workflows{state="SUCCEEDED"} 7.0' in body
    assert 'task_supervisor_workflows{state="CANCELLED"} 0.0' in body
    assert 'task_supervisor_workflow_sweeps_total{outcome="handed_over"} 2.0' in body
