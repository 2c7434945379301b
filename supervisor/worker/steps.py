"""Workflows' fast path in a worker child: right after a step's task succeeded, hand over.

The task row's verdict is already written (db_worker sends ``task_finished`` after its fenced
save), so the hand-over reads it from the database, the only truth: a refused write leaves the
row RUNNING and nothing is handed over. Failures are left to the supervisors' sweep, which knows
the retry policies that decide whether a FAILED row is final. A child killed between the verdict
and the hand-over's commit leaves the hand-over to that sweep too (``chores/workflowsweep.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from task_supervisor import events
from task_supervisor.workflows.handover import SUCCESS

log = logging.getLogger("task_supervisor.worker")

CHECK_EVERY = 2.0  # seconds between looks for RUNNING workflows; none -> no per-task lookup
UNCHECKED_MAX = 1000  # task ids kept while no workflow was RUNNING at the last look


class StepHandOver:
    """Looks a finished task's step up only while some workflow is RUNNING (one query every
    CHECK_EVERY otherwise). A workflow enqueued just after a look that said none is caught at the
    next look: the ids of tasks that succeeded in between are kept, and handed over if that look
    finds a RUNNING workflow (a step of a workflow keeps it RUNNING until it is handed over, so a
    look that finds none proves none of them was a step)."""

    def __init__(self, backend: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self.checked_at = float("-inf")
        self.active = False
        self.unchecked: list[str] = []

    def finished(self, sender: Any, task_result: Any, **kwargs: Any) -> None:
        """The ``task_finished`` receiver: never raises into db_worker."""
        status = str(getattr(task_result.status, "value", task_result.status))
        if status not in SUCCESS:
            return
        try:
            looks_now = self.clock() - self.checked_at >= CHECK_EVERY
            if self.workflows_running():
                ids, self.unchecked = [*self.unchecked, str(task_result.id)], []
                self.hand_over(ids)
            elif not looks_now:  # it finished after the look that said none: kept for the next
                self.unchecked = [*self.unchecked[-(UNCHECKED_MAX - 1) :], str(task_result.id)]
        except Exception as exc:  # the sweep completes what this could not
            log.warning(
                "Could not hand over after task %s; the supervisor's sweep will: %s",
                task_result.id,
                exc,
                extra={"event": events.WORKFLOW_HANDOVER_FAILED, "task_id": str(task_result.id), "pid": os.getpid()},
            )

    def workflows_running(self) -> bool:
        from task_supervisor.models import Workflow

        now = self.clock()
        if now - self.checked_at >= CHECK_EVERY:
            self.checked_at = now  # before the query: a failing one is not retried at every task
            rows = Workflow.objects.using(self.backend.db_alias)
            self.active = rows.filter(state=Workflow.RUNNING).exists()
            if not self.active:
                self.unchecked = []  # none of them was a step (see the class's doc)
        return self.active

    def hand_over(self, task_ids: list[str]) -> None:
        from task_supervisor.models import WorkflowStep
        from task_supervisor.workflows import handover

        steps = WorkflowStep.objects.using(self.backend.db_alias).filter(task_result_id__in=task_ids)
        for workflow_id in sorted(set(steps.values_list("workflow_id", flat=True))):
            handover.advance(self.backend, workflow_id)


def hook(backend: Any) -> StepHandOver | None:
    """Hand over after each successful task, when the workflows' tables are installed."""
    from django.apps import apps

    if not apps.is_installed("task_supervisor"):
        return None
    steps = StepHandOver(backend)
    backend.signals.task_finished.connect(steps.finished, weak=False, dispatch_uid="task_supervisor_workflow_steps")
    return steps
