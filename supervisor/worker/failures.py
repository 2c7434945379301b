"""The child's side of Sentry reporting: a task that fails here is reported once, with its tags.

Hooked only when the project initialised sentry_sdk (task_supervisor.sentry); the receiver runs
inside db_worker's ``except`` block (the framework sends ``task_finished`` there), so the event
carries the task's own exception and traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from task_supervisor import sentry
from task_supervisor.wire.spec import ChildSpec


def hook(backend: Any, spec: ChildSpec) -> bool:
    """Report this child's failed tasks to Sentry when it is on; True if hooked."""
    if not sentry.install():
        return False

    def finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        status = str(getattr(task_result.status, "value", task_result.status))
        if status != "FAILED":
            return
        task = getattr(task_result, "task", None)
        errors = getattr(task_result, "errors", None) or []
        sentry.report(
            task_id=str(task_result.id),
            path=str(getattr(task, "module_path", "") or ""),
            queue=str(getattr(task, "queue_name", "") or ""),
            attempt=attempts(task_result),
            worker_id=spec.worker_id,
            exception_path=str(getattr(errors[-1], "exception_class_path", "")) if errors else "",
            exc_info=sys.exc_info(),
        )

    # weak=False: the receiver is a closure that nothing else keeps alive.
    backend.signals.task_finished.connect(finished, weak=False, dispatch_uid="task_supervisor_sentry")
    return True


def attempts(task_result: Any) -> int:
    """Which attempt this was: the row's worker ids so far (older frameworks have no ``attempts``)."""
    value = getattr(task_result, "attempts", None)
    if isinstance(value, int):
        return value
    return len(getattr(task_result, "worker_ids", None) or []) or 1
