"""What ``enqueue`` returns: a workflow's id, its state, and each step's state and task result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from task_supervisor.workflows.shapes import resolve


@dataclass(frozen=True, slots=True)
class StepState:
    path: str
    task_path: str
    state: str
    task_id: str  # "" until enqueued
    result: Any
    error: str


@dataclass(frozen=True, slots=True)
class WorkflowHandle:
    """A workflow by id; every property reads the database afresh."""

    id: str
    alias: str = "default"

    @classmethod
    def get(cls, workflow_id: str, alias: str = "default") -> WorkflowHandle:
        """The handle of an existing workflow; LookupError if there is none."""
        from task_supervisor.models import Workflow

        if not Workflow.objects.using(alias).filter(pk=workflow_id).exists():
            raise LookupError(f"No workflow has id {workflow_id!r}.")
        return cls(str(workflow_id), alias)

    def _row(self) -> Any:
        from task_supervisor.models import Workflow

        return Workflow.objects.using(self.alias).get(pk=self.id)

    @property
    def state(self) -> str:
        """RUNNING, SUCCEEDED, FAILED or CANCELLED."""
        return str(self._row().state)

    @property
    def steps(self) -> list[StepState]:
        from task_supervisor.models import WorkflowStep

        rows = WorkflowStep.objects.using(self.alias).filter(workflow_id=self.id).order_by("position")
        return [StepState(r.path, r.task_path, r.state, r.task_result_id, r.result, r.error) for r in rows]

    def step(self, path: str) -> StepState:
        found = [s for s in self.steps if s.path == path]
        if not found:
            raise LookupError(f"Workflow {self.id} has no step {path!r}.")
        return found[0]

    def task_result(self, path: str) -> Any:
        """The framework's TaskResult of a step's task (None before it is enqueued)."""
        from task_supervisor.models import WorkflowStep
        from task_supervisor.workflows.handover import build_task

        row = WorkflowStep.objects.using(self.alias).filter(workflow_id=self.id, path=path).first()
        if row is None:
            raise LookupError(f"Workflow {self.id} has no step {path!r}.")
        if not row.task_result_id:
            return None
        return build_task(row.task_path, row.options or {}).get_result(row.task_result_id)

    @property
    def result(self) -> Any:
        """The workflow's result once SUCCEEDED (its last step's, or a list for a final group)."""
        row = self._row()
        if row.state != "SUCCEEDED" or row.output is None:
            return None
        return resolve(row.output, {s.path: s.result for s in self.steps})
