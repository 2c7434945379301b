"""Enqueueing a workflow: every check first, then its rows in one transaction (the caller's, if any).

The Workflow row, every step row (PENDING) and the task rows of the first steps are written in one
``transaction.atomic`` on the database of the task rows, nested in the caller's transaction when
there is one: a workflow enqueued inside a view's transaction exists only if that commits, like a
task enqueued there. Bad input raises ``WorkflowError`` before anything is written.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from task_supervisor import events
from task_supervisor.workflows import handover
from task_supervisor.workflows.handle import WorkflowHandle
from task_supervisor.workflows.shapes import (
    Shape,
    Step,
    StepPlan,
    WorkflowError,
    check_json,
    compile_shape,
    describe,
    task_path,
)

log = logging.getLogger(__name__)

NAME_MAX = 200


def enqueue(shape: Shape, *, on_error: Step | None = None, name: str = "") -> WorkflowHandle:
    """Write the workflow and enqueue its first steps; returns its handle."""
    from django.db import transaction
    from django.utils import timezone

    from task_supervisor.models import Workflow, WorkflowStep

    plans, output = compile_shape(shape, on_error)
    if not isinstance(name, str) or len(name) > NAME_MAX:
        raise WorkflowError(f"name must be a string of at most {NAME_MAX} characters, got {name!r}.")
    backend = check_plans(plans)
    alias = backend.db_alias
    with transaction.atomic(using=alias):
        workflow = Workflow.objects.using(alias).create(
            id=uuid.uuid4(), name=name, shape=describe(shape), output=output, created_at=timezone.now()
        )
        WorkflowStep.objects.using(alias).bulk_create([_row(workflow, p) for p in plans])
        report = handover.advance_locked(backend, workflow, handover.never_final)
    handover.log_report(report)
    log.info(
        "Workflow %s enqueued: %d steps, %d enqueued now",
        workflow.pk,
        len(plans),
        len(report.enqueued),
        extra={"event": events.WORKFLOW_ENQUEUED, "workflow_id": str(workflow.pk), "steps": len(plans)},
    )
    return WorkflowHandle(str(workflow.pk), alias)


def _row(workflow: Any, p: StepPlan) -> Any:
    from task_supervisor.models import WorkflowStep

    return WorkflowStep(
        workflow=workflow,
        path=p.path,
        position=p.position,
        task_path=task_path(p.step.task),
        args=list(p.step.args),
        kwargs=dict(p.step.kwargs),
        options=options_of(p.step.task),
        after=list(p.after),
        receives=p.receives,
    )


def options_of(task: Any) -> dict[str, Any]:
    """What ``task.using(...)`` set that a rebuilt task needs: queue, priority, backend."""
    options = {"queue_name": task.queue_name, "priority": task.priority, "backend": task.backend}
    return {k: v for k, v in options.items() if v is not None}


def check_plans(plans: list[StepPlan]) -> Any:
    """Check every step; returns the database backend they share. WorkflowError otherwise."""
    from django.db import router

    from task_supervisor.models import Workflow

    alias = router.db_for_write(Workflow)
    found = None
    for p in plans:
        check_json(p)
        backend = _check_task(p)
        if backend.db_alias != alias:
            raise WorkflowError(
                f"Step {p.path} ({task_path(p.step.task)}) uses task backend {backend.alias!r} on database "
                f"{backend.db_alias!r}, but workflows live on {alias!r}; use a database backend on {alias!r}."
            )
        found = found or backend
    return found


def _check_task(p: StepPlan) -> Any:
    from django.utils.module_loading import import_string

    from task_supervisor import compat
    from task_supervisor.workflows.shapes import is_task

    task, path = p.step.task, task_path(p.step.task)
    try:
        same = import_string(path)
    except ImportError:
        same = None
    if not is_task(same):
        raise WorkflowError(
            f"Step {p.path}: task {path!r} does not import by its dotted path; define it at module level."
        )
    try:
        backend = compat.resolve(task.backend)
    except compat.BackendError as exc:
        raise WorkflowError(f"Step {p.path} ({path}): {exc}") from None
    validate = getattr(task.get_backend(), "validate_task", None)
    if validate is not None:
        try:
            validate(task)
        except Exception as exc:  # the framework's InvalidTask and friends
            raise WorkflowError(f"Step {p.path} ({path}) cannot be enqueued: {exc}") from None
    return backend
