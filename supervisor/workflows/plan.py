"""The hand-over's decisions, pure: given the workflow's state and its steps' states, what happens.

``decide`` is called under the workflow row's lock after the steps' outcomes are recorded, and
again after what it decided was applied, until it decides nothing: it is idempotent, so a sweep
that calls it on a workflow already handed over changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from task_supervisor.workflows.shapes import ON_ERROR

# Workflow states
RUNNING, SUCCEEDED, FAILED, CANCELLED = "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
WORKFLOW_STATES = (RUNNING, SUCCEEDED, FAILED, CANCELLED)
# Step states
PENDING, ENQUEUED, SKIPPED = "PENDING", "ENQUEUED", "SKIPPED"
STEP_STATES = (PENDING, ENQUEUED, SUCCEEDED, FAILED, CANCELLED, SKIPPED)
# Allowed step transitions, all made by conditional UPDATEs (WHERE state = the first):
#   PENDING  -> ENQUEUED   its task row inserted in the same transaction
#   PENDING  -> CANCELLED  the workflow failed or was cancelled before it was ready
#   PENDING  -> SKIPPED    an error callback the workflow did not need
#   PENDING  -> FAILED     its task could not be enqueued (no longer imports, say)
#   ENQUEUED -> SUCCEEDED | FAILED   from its task row's final verdict
TRANSITIONS = {
    PENDING: (ENQUEUED, CANCELLED, SKIPPED, FAILED),
    ENQUEUED: (SUCCEEDED, FAILED),
}


@dataclass(frozen=True, slots=True)
class StepView:
    """What a decision needs of a step row."""

    path: str
    state: str
    after: tuple[str, ...] = ()
    position: int = 0

    @property
    def is_error_callback(self) -> bool:
        return self.path == ON_ERROR


@dataclass(frozen=True, slots=True)
class Decision:
    workflow_state: str  # the workflow's state after this decision
    enqueue: tuple[str, ...] = ()  # PENDING steps to enqueue now
    cancel: tuple[str, ...] = ()  # PENDING steps that will never run
    skip: tuple[str, ...] = ()  # error callbacks not needed
    failed_step: str = ""  # the step that failed the workflow, when it just did

    def changes(self, state: str) -> bool:
        return self.workflow_state != state or bool(self.enqueue or self.cancel or self.skip)


def decide(state: str, steps: Iterable[StepView]) -> Decision:
    ordered = sorted(steps, key=lambda s: s.position)
    body = [s for s in ordered if not s.is_error_callback]
    handlers = [s.path for s in ordered if s.is_error_callback and s.state == PENDING]
    pending = tuple(s.path for s in body if s.state == PENDING)
    if state == RUNNING:
        failed = next((s for s in body if s.state == FAILED), None)
        if failed is not None:  # RUNNING -> FAILED: nothing more starts; the error callback does
            return Decision(FAILED, enqueue=tuple(handlers), cancel=pending, failed_step=failed.path)
        if all(s.state == SUCCEEDED for s in body):  # RUNNING -> SUCCEEDED
            return Decision(SUCCEEDED, skip=tuple(handlers))
        done = {s.path for s in body if s.state == SUCCEEDED}
        ready = tuple(s.path for s in body if s.state == PENDING and set(s.after) <= done)
        return Decision(RUNNING, enqueue=ready)
    if state == FAILED:  # already decided; only what a crash may have left (nothing, normally)
        return Decision(FAILED, enqueue=tuple(handlers), cancel=pending)
    if state == CANCELLED:
        return Decision(CANCELLED, cancel=pending + tuple(handlers))
    return Decision(state, skip=tuple(handlers))
