"""The hand-over: one idempotent transaction that moves a workflow on from its task rows' verdicts.

``advance`` locks the workflow row (select_for_update; on SQLite the transaction holds the write
lock), records each ENQUEUED step's outcome from its task row (the truth: a step is SUCCEEDED only
when its row is, FAILED only when its row's failure is final), decides what became ready
(``plan.decide``), enqueues it and moves its step row PENDING -> ENQUEUED with a conditional UPDATE
in this same transaction. The task row and the step's ENQUEUED state commit together or not at
all, so a step's task is inserted at most once, and a crash at any instant leaves either the state
before (the sweep runs ``advance`` again) or the state after (nothing left to do).

Two callers: a worker child right after a step's task finished (``worker/steps.py``, the fast
path), and the supervisors' janitor sweep (``chores/workflowsweep.py``), which alone judges
failures: whether a FAILED row is final depends on the retry policies in config.toml.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from task_supervisor import events
from task_supervisor.workflows import plan
from task_supervisor.workflows.shapes import resolve

log = logging.getLogger(__name__)

SUCCESS = ("SUCCESSFUL", "SUCCEEDED", "COMPLETE")  # the status names of the three setups
TASK_FIELDS = (
    "id", "status", "return_value", "exception_class_path", "traceback", "worker_ids", "task_path",
    "started_at", "finished_at",
)  # fmt: skip
ERROR_MAX = 2000  # characters of a failure kept on the step row

FailureIsFinal = Callable[[Any], bool]  # a FAILED task row -> is its failure final (no retry coming)?


class HandOverConflict(Exception):
    """A step row was not in the state its lock said: the transaction rolls back, nothing is lost."""


@dataclass(slots=True)
class Report:
    """What one hand-over did, for logs and counters."""

    workflow_id: str
    recorded: dict[str, str] = field(default_factory=dict)  # step path -> its new state
    enqueued: list[str] = field(default_factory=list)
    state: str = plan.RUNNING
    finished: bool = False  # the workflow left RUNNING in this hand-over


def never_final(row: Any) -> bool:
    """For callers that do not know the retry policies: a FAILED row is left to the sweep."""
    return False


def transaction_of(backend: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """The backend's own write transaction (exclusive on SQLite)."""
    utils = importlib.import_module(f"{backend.package}.utils")
    return lambda: utils.exclusive_transaction(backend.db_alias)


def advance(
    backend: Any,
    workflow_id: Any,
    failure_is_final: FailureIsFinal = never_final,
    transaction: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> Report | None:
    """Hand the workflow over as far as its task rows allow; None if it does not exist."""
    from task_supervisor.models import Workflow

    with (transaction or transaction_of(backend))():
        rows = Workflow.objects.using(backend.db_alias).select_for_update()
        workflow = rows.filter(pk=workflow_id).first()
        if workflow is None:
            return None
        report = advance_locked(backend, workflow, failure_is_final)
    log_report(report)
    return report


def advance_locked(backend: Any, workflow: Any, failure_is_final: FailureIsFinal) -> Report:
    """``advance`` inside the caller's transaction, the workflow row already locked."""
    from task_supervisor.models import WorkflowStep

    steps = {s.path: s for s in WorkflowStep.objects.using(backend.db_alias).filter(workflow_id=workflow.pk)}
    report = Report(str(workflow.pk), state=workflow.state)
    _record_outcomes(backend, steps, failure_is_final, report)
    for _ in range(len(steps) + 1):  # each round settles at least one step, or stops
        decision = plan.decide(workflow.state, [_view(s) for s in steps.values()])
        if not decision.changes(workflow.state):
            break
        _apply(backend, workflow, steps, decision, report)
    return report


def _view(row: Any) -> plan.StepView:
    return plan.StepView(row.path, row.state, tuple(row.after or ()), row.position)


@contextlib.contextmanager
def _moving(step: Any, old: str, new: str) -> Iterator[dict[str, Any]]:
    """Move ``step`` from ``old`` to ``new`` with a conditional UPDATE of the fields the body sets."""
    from task_supervisor.models import WorkflowStep

    assert new in plan.TRANSITIONS.get(old, ()), (old, new)
    fields: dict[str, Any] = {}
    yield fields
    updated = WorkflowStep.objects.using(step._state.db).filter(pk=step.pk, state=old).update(state=new, **fields)
    if updated != 1:
        raise HandOverConflict(f"Step {step.path} of workflow {step.workflow_id} was not {old}.")
    step.state = new
    for name, value in fields.items():
        setattr(step, name, value)


def _record_outcomes(backend: Any, steps: dict[str, Any], failure_is_final: FailureIsFinal, report: Report) -> None:
    """ENQUEUED -> SUCCEEDED or FAILED, from the task rows' final verdicts."""
    enqueued = [s for s in steps.values() if s.state == plan.ENQUEUED]
    if not enqueued:
        return
    tasks = backend.model._base_manager.using(backend.db_alias)
    found = {str(r.id): r for r in tasks.filter(id__in=[s.task_result_id for s in enqueued]).only(*TASK_FIELDS)}
    for step in enqueued:
        row = found.get(step.task_result_id)
        if row is None:
            outcome, error = plan.FAILED, f"Its task row {step.task_result_id} is gone (deleted or pruned)."
        elif row.status in SUCCESS:
            outcome, error = plan.SUCCEEDED, ""
        elif row.status == "FAILED" and failure_is_final(row):
            outcome, error = plan.FAILED, failure_text(row)
        else:
            continue
        with _moving(step, plan.ENQUEUED, outcome) as fields:
            fields.update(error=error, finished_at=getattr(row, "finished_at", None))
            fields["result"] = row.return_value if outcome == plan.SUCCEEDED else None
            fields["started_at"] = getattr(row, "started_at", None)
        report.recorded[step.path] = outcome


def failure_text(row: Any) -> str:
    """The exception class and the traceback's last line: "builtins.ValueError: no"."""
    path = str(row.exception_class_path or "")
    lines = [line.strip() for line in str(row.traceback or "").splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    for prefix in (f"{path}:", f"{path.rsplit('.', 1)[-1]}:"):
        if last.startswith(prefix):
            last = last[len(prefix) :].strip()
            break
    return f"{path}: {last}"[:ERROR_MAX]


def _apply(backend: Any, workflow: Any, steps: dict[str, Any], decision: plan.Decision, report: Report) -> None:
    from django.utils import timezone

    from task_supervisor.models import Workflow

    if decision.workflow_state != workflow.state:
        now = timezone.now()
        fields = {"state": decision.workflow_state, "finished_at": now}
        if decision.failed_step:
            fields["failed_step"] = decision.failed_step
        Workflow.objects.using(backend.db_alias).filter(pk=workflow.pk, state=workflow.state).update(**fields)
        for name, value in fields.items():
            setattr(workflow, name, value)
        report.state, report.finished = decision.workflow_state, True
    for path in decision.cancel:
        with _moving(steps[path], plan.PENDING, plan.CANCELLED) as fields:
            fields["finished_at"] = timezone.now()
        report.recorded[path] = plan.CANCELLED
    for path in decision.skip:
        with _moving(steps[path], plan.PENDING, plan.SKIPPED):
            pass
        report.recorded[path] = plan.SKIPPED
    for path in decision.enqueue:
        _enqueue(workflow, steps, steps[path], report)


def _enqueue(workflow: Any, steps: dict[str, Any], step: Any, report: Report) -> None:
    """PENDING -> ENQUEUED with its task row, or PENDING -> FAILED if the task cannot be enqueued."""
    from django.db import DatabaseError
    from django.db.models.functions import Now

    args = list(step.args or ())
    if step.receives is not None:
        results = {s.path: s.result for s in steps.values() if s.state == plan.SUCCEEDED}
        args.insert(0, resolve(step.receives, results, _failure(workflow, steps)))
    try:
        result = build_task(step.task_path, step.options or {}).enqueue(*args, **(step.kwargs or {}))
    except DatabaseError:
        raise
    except Exception as exc:  # the task no longer imports, its queue is not allowed...
        with _moving(step, plan.PENDING, plan.FAILED) as fields:
            fields["error"] = f"It could not be enqueued: {type(exc).__name__}: {exc}"[:ERROR_MAX]
        report.recorded[step.path] = plan.FAILED
        return
    with _moving(step, plan.PENDING, plan.ENQUEUED) as fields:
        fields.update(task_result_id=str(result.id), enqueued_at=Now())
    report.enqueued.append(step.path)


def build_task(path: str, options: dict[str, Any]) -> Any:
    """The task at ``path`` with the options it was written with (queue_name, priority, backend)."""
    from django.utils.module_loading import import_string

    from task_supervisor.workflows.shapes import is_task

    task = import_string(path)
    if not is_task(task):
        raise TypeError(f"{path} is no longer a task")
    return task.using(**options) if options else task


def _failure(workflow: Any, steps: dict[str, Any]) -> dict[str, Any] | None:
    """What the error callback receives: the workflow, the step that failed, its task and error."""
    failed = steps.get(workflow.failed_step)
    if failed is None:
        return None
    return {
        "workflow": str(workflow.pk),
        "step": failed.path,
        "task_path": failed.task_path,
        "task_id": failed.task_result_id,
        "error": failed.error,
    }


def log_report(report: Report) -> None:
    extra = {"workflow_id": report.workflow_id, "pid": os.getpid()}  # a child's fast path, or a sweep
    for path in report.enqueued:
        log.info(
            "Workflow %s: step %s enqueued",
            report.workflow_id,
            path,
            extra={**extra, "event": events.WORKFLOW_STEP_ENQUEUED, "step": path},
        )
    if report.finished:
        level = logging.INFO if report.state == plan.SUCCEEDED else logging.WARNING
        log.log(
            level,
            "Workflow %s %s",
            report.workflow_id,
            report.state.lower(),
            extra={**extra, "event": events.WORKFLOW_FINISHED, "state": report.state},
        )
