"""Workflows for Django's tasks: chains, groups and chords, durable in the tasks' own database.

    from task_supervisor.workflows import chain, chord, group, step

    flow = chain(step(fetch, url), step(parse), chord(group(step(a), step(b)), step(merge)))
    handle = flow.enqueue()            # or enqueue(flow, on_error=step(alert), name="import")

See ``shapes`` for the passing convention, ``handover`` for why each step is enqueued exactly once.
"""

from __future__ import annotations

from typing import Any

from task_supervisor.workflows.handle import StepState, WorkflowHandle
from task_supervisor.workflows.shapes import Chain, Chord, Group, Step, WorkflowError, chain, chord, group, step

__all__ = [
    "Chain",
    "Chord",
    "Group",
    "Step",
    "StepState",
    "WorkflowError",
    "WorkflowHandle",
    "chain",
    "chord",
    "enqueue",
    "group",
    "step",
]


def enqueue(shape: Any, *, on_error: Step | None = None, name: str = "") -> WorkflowHandle:
    """Write the workflow in the current transaction and enqueue its first steps."""
    from task_supervisor.workflows.enqueue import enqueue as _enqueue

    return _enqueue(shape, on_error=on_error, name=name)
