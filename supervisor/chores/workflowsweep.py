"""The janitor's workflow sweep: finds steps whose task rows reached a final verdict but were not
handed over (the child died between the verdict and the hand-over's commit, the hand-over failed,
or the step failed: failures are judged only here), and completes the hand-over with the same
idempotent ``workflows.handover.advance``. It also counts workflows by state for status and
metrics.

Bounded: at most STEPS_PER_SWEEP ENQUEUED steps are looked at per sweep (a cursor walks them all
across sweeps) and at most WORKFLOWS_PER_SWEEP workflows advanced, each in its own short
transaction under the chores' statement limits; every node sweeps, and the workflow row's lock
makes their hand-overs of one workflow take turns.

Cheap when idle: one transaction per sweep, every SWEEP_INTERVAL while steps are in flight, every
IDLE_INTERVAL when the last sweep found none; a child's exit or a failed task on this node
(``nudge``, from the janitor) brings the next sweep forward to the next turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from task_supervisor import events
from task_supervisor.chores import recovery
from task_supervisor.chores.retry import matches
from task_supervisor.compat import TaskBackend
from task_supervisor.config import Config
from task_supervisor.observe.stats import Stats
from task_supervisor.workflows import handover, plan

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 2.0  # seconds between sweeps while steps are in flight
IDLE_INTERVAL = 30.0  # seconds between sweeps while none is: one short transaction
COUNT_INTERVAL = 10.0  # seconds between counts of workflows by state (a GROUP BY over all of them)
STEPS_PER_SWEEP = 500
WORKFLOWS_PER_SWEEP = 20
# Seconds after which a FAILED row that its retry policy would retry, but which is still FAILED,
# counts as final: its retry was lost with the supervisor that would have scheduled it.
RETRY_GRACE = 60.0
CANCELLED = "task_supervisor.TaskCancelled"


class WorkflowSweep:
    def __init__(self, config: Config, clock: Callable[[], float], stats: Stats) -> None:
        self.config = config
        self.clock = clock
        self.stats = stats
        self.next_at = 0.0
        self.cursor = 0  # the last step id looked at; 0 starts over
        self.next_count = 0.0

    def next_due(self) -> float:
        return self.next_at

    def nudge(self) -> None:
        """Something may want a hand-over (a child exited, a task failed): sweep on the next turn."""
        self.next_at = min(self.next_at, self.clock())

    def tick(self, now: float, backends: list[TaskBackend]) -> None:
        if now < self.next_at or not backends:
            return
        backend = backends[0]
        recovery.set_sqlite_busy_timeout(backend)
        with recovery.bounded(backend):
            found = self.in_flight(backend)
            if now >= self.next_count:
                self.count(backend)
                self.next_count = now + COUNT_INTERVAL
        self.next_at = now + (SWEEP_INTERVAL if found else IDLE_INTERVAL)
        due, overdue = self.due(backend, found)
        for workflow_id in due:
            self.hand_over(backend, workflow_id, overdue)

    def in_flight(self, backend: TaskBackend) -> list[tuple[int, Any, str]]:
        """(step id, workflow id, task id) of ENQUEUED steps, from the cursor on, at most STEPS_PER_SWEEP."""
        from task_supervisor.models import WorkflowStep

        steps = WorkflowStep.objects.using(backend.db_alias).filter(state=plan.ENQUEUED, id__gt=self.cursor)
        found = list(steps.order_by("id").values_list("id", "workflow_id", "task_result_id")[:STEPS_PER_SWEEP])
        self.cursor = found[-1][0] if len(found) == STEPS_PER_SWEEP else 0
        return found

    def due(self, backend: TaskBackend, found: list[tuple[int, Any, str]]) -> tuple[list[Any], set[str]]:
        """Workflows with a step to hand over, and the FAILED task ids whose retry is overdue."""
        from django.db.models.functions import Now

        if not found:
            return [], set()
        with recovery.bounded(backend):
            tasks = backend.model._base_manager.using(backend.db_alias).filter(id__in=[f[2] for f in found])
            rows = {str(r["id"]): r for r in tasks.values("id", "status", *FAILURE_FIELDS)}
            failed = [i for i, r in rows.items() if r["status"] == "FAILED"]
            grace = Now() - timedelta(seconds=RETRY_GRACE)
            overdue = {str(i) for i in tasks.filter(id__in=failed, finished_at__lt=grace).values_list("id", flat=True)}
        due: dict[Any, None] = {}
        for step_id, workflow_id, task_id in found:
            row = rows.get(task_id)
            if row is not None and row["status"] not in handover.SUCCESS:
                if row["status"] != "FAILED" or not self.failure_is_final(row, overdue):
                    continue
            if workflow_id not in due and len(due) == WORKFLOWS_PER_SWEEP:
                self.cursor, self.next_at = step_id - 1, self.clock()  # the rest at once, next turn
                break
            due[workflow_id] = None
        return list(due), overdue

    def failure_is_final(self, row: Any, overdue: set[str]) -> bool:
        """No retry is coming: none applies, its attempts are used up, or it is overdue."""
        get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
        exception = str(get("exception_class_path") or "")
        if exception == CANCELLED:
            return True
        worker_ids = get("worker_ids") or []
        parsed = recovery.parse_worker_id(str(worker_ids[-1])) if worker_ids else None
        policy = self.config.retry_policy(parsed[1] if parsed else "", str(get("task_path")))
        if policy is None or not matches(policy, exception) or len(worker_ids) >= policy.max_attempts:
            return True
        return str(get("id")) in overdue

    def hand_over(self, backend: TaskBackend, workflow_id: Any, overdue: set[str]) -> None:
        try:
            report = handover.advance(
                backend,
                workflow_id,
                lambda row: self.failure_is_final(row, overdue),
                transaction=lambda: recovery.bounded(backend),
            )
        except Exception as exc:  # one workflow's trouble must not stop the others' hand-overs
            log.warning(
                "Could not hand over workflow %s; trying again at the next sweep: %s",
                workflow_id,
                exc,
                extra={"event": events.WORKFLOW_HANDOVER_FAILED, "workflow_id": str(workflow_id)},
            )
            return
        if report is not None and (report.recorded or report.enqueued):
            self.stats.workflow_sweeps["handed_over"] += 1

    def count(self, backend: TaskBackend) -> None:
        from django.db.models import Count

        from task_supervisor.models import Workflow

        rows = Workflow.objects.using(backend.db_alias).values("state").annotate(n=Count("pk")).order_by()
        counted = {r["state"]: r["n"] for r in rows}
        self.stats.workflows = {state: counted.get(state, 0) for state in plan.WORKFLOW_STATES}


FAILURE_FIELDS = ("exception_class_path", "worker_ids", "task_path")
