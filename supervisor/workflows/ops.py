"""Operating workflows: list them, show one with its steps, cancel one. The CLI (``task-supervisor
workflows``) and the admin call these; a cancel is recorded in the audit log like every action.

A cancel takes the workflow row's lock, as every hand-over does: the workflow becomes CANCELLED
and its PENDING steps (and error callback) CANCELLED in one transaction, so no hand-over enqueues
anything after it; the tasks of its ENQUEUED steps are cancelled through ``ops.cancel`` (READY
ones at once, RUNNING ones by the node running them) and their verdicts are recorded as usual.
"""

from __future__ import annotations

from typing import Any

from task_supervisor import ops
from task_supervisor.ops import OperationError, Outcome
from task_supervisor.workflows import plan

LIST_LIMIT = 50


def _workflow_row(w: Any) -> dict[str, Any]:
    return {
        "id": str(w.pk),
        "name": w.name,
        "state": w.state,
        "created_at": w.created_at.isoformat(),
        "finished_at": w.finished_at.isoformat() if w.finished_at else None,
        "failed_step": w.failed_step,
    }


def _step_row(s: Any) -> dict[str, Any]:
    def at(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "step": s.path,
        "task": s.task_path,
        "state": s.state,
        "task_id": s.task_result_id,
        "enqueued_at": at(s.enqueued_at),
        "started_at": at(s.started_at),
        "finished_at": at(s.finished_at),
        "error": s.error,
    }


def list_workflows(*, state: str | None = None, limit: int = LIST_LIMIT, alias: str = "default") -> Outcome:
    from task_supervisor.models import Workflow

    if state is not None and state not in plan.WORKFLOW_STATES:
        raise OperationError(f"Unknown workflow state {state!r}; use one of {', '.join(plan.WORKFLOW_STATES)}.")
    rows = Workflow.objects.using(alias).order_by("-created_at")
    if state is not None:
        rows = rows.filter(state=state)
    found = [_workflow_row(w) for w in rows[: max(1, limit)]]
    return Outcome("workflows", f"{len(found)} workflows (the latest {max(1, limit)} at most).", found, len(found))


def _get(workflow_id: str, alias: str, lock: bool = False) -> Any:
    from django.core.exceptions import ValidationError

    from task_supervisor.models import Workflow

    rows = Workflow.objects.using(alias)
    try:
        found = (rows.select_for_update() if lock else rows).filter(pk=workflow_id).first()
    except (ValidationError, ValueError):
        found = None
    if found is None:
        raise OperationError(f"No workflow has id {workflow_id!r}; `task-supervisor workflows` lists them.")
    return found


def show(workflow_id: str, *, alias: str = "default") -> Outcome:
    from task_supervisor.models import WorkflowStep

    workflow = _get(workflow_id, alias)
    steps = WorkflowStep.objects.using(alias).filter(workflow_id=workflow.pk).order_by("position")
    message = f"Workflow {workflow.pk} ({workflow.name or 'unnamed'}) is {workflow.state}."
    rows = [_step_row(s) for s in steps]
    return Outcome("workflow", message, rows, len(rows))


def cancel(workflow_id: str, *, actor: str | None = None, backend: str = "default") -> Outcome:
    """The workflow CANCELLED; nothing more of it is enqueued; its enqueued tasks are cancelled."""
    from django.utils import timezone

    from task_supervisor.models import WorkflowStep

    actor = actor or ops.default_actor()
    be = ops._backend(backend)
    with ops._writing(be.db_alias):
        workflow = _get(workflow_id, be.db_alias, lock=True)
        if workflow.state != plan.RUNNING:
            return Outcome("workflow-cancel", f"Workflow {workflow.pk} is already {workflow.state}; nothing to cancel.")
        steps = WorkflowStep.objects.using(be.db_alias).filter(workflow_id=workflow.pk)
        now = timezone.now()
        pending = steps.filter(state=plan.PENDING).update(state=plan.CANCELLED, finished_at=now)
        workflow.state, workflow.finished_at, workflow.cancelled_by = plan.CANCELLED, now, actor[:200]
        workflow.save(update_fields=["state", "finished_at", "cancelled_by"])
        task_ids = list(steps.filter(state=plan.ENQUEUED).values_list("task_result_id", flat=True))
        stopped = _cancel_tasks(task_ids, actor, backend)
        detail = {"workflow": str(workflow.pk), "pending": pending, "tasks": task_ids[:100]}
        ops._record("workflow-cancel", actor, detail, pending + stopped, be.db_alias)
    return Outcome(
        "workflow-cancel",
        f"Cancelled workflow {workflow.pk}: {pending} steps will not run, {stopped} enqueued tasks cancelled.",
        [_workflow_row(workflow)],
        pending + stopped,
    )


def _cancel_tasks(task_ids: list[str], actor: str, backend: str) -> int:
    if not task_ids:
        return 0
    try:
        return ops.cancel(task_ids, actor=actor, backend=backend).count
    except OperationError:  # every row already gone: nothing to stop
        return 0
