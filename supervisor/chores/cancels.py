"""Cancel requests for RUNNING tasks (``task_supervisor.ops.cancel``): each supervisor takes those
whose task its own children run (marking them handled) and its loop tells the child.

One indexed query on the small requests table every CANCEL_POLL, limited to this supervisor's
live worker ids, then one on the task rows they name: a request whose row is no longer RUNNING
(finished, or recovered after its worker died) is marked handled with nothing to do.
"""

from __future__ import annotations

from collections.abc import Collection

from task_supervisor.chores import recovery
from task_supervisor.compat import TaskBackend

CANCEL_POLL = 0.5  # seconds between looks at the requests: a cancel reaches its child within about this


def due(backend: TaskBackend, live_worker_ids: Collection[str]) -> list[tuple[str, str]]:
    """(task id, worker id) of unhandled requests for tasks RUNNING in one of ``live_worker_ids``."""
    from django.utils import timezone

    from task_supervisor.models import CancelRequest

    if not live_worker_ids:
        return []
    recovery.set_sqlite_busy_timeout(backend)
    with recovery.bounded(backend):
        requests = dict(
            CancelRequest.objects.using(backend.db_alias)
            .filter(handled_at=None, worker_id__in=sorted(live_worker_ids))
            .values_list("task_id", "worker_id")[:100]
        )
        if not requests:
            return []
        running = {
            str(pk)
            for pk in backend.model.objects.using(backend.db_alias)
            .filter(id__in=list(requests), status="RUNNING")
            .values_list("id", flat=True)
        }
        # Taken: the loop delivers them (or finds the task finished); a moot one is done with too.
        CancelRequest.objects.using(backend.db_alias).filter(task_id__in=list(requests)).update(
            handled_at=timezone.now()
        )
        return [(task_id, worker) for task_id, worker in requests.items() if _key(task_id) in running]


def _key(task_id: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        return task_id


def requested(backend: TaskBackend, worker_id: str) -> bool:
    """Was the task RUNNING under ``worker_id`` cancelled? Asked when its worker is lost, so a
    cancelled task is recorded as cancelled (never requeued) even if no one could tell it."""
    from task_supervisor.models import CancelRequest

    tasks = CancelRequest.objects.using(backend.db_alias).filter(worker_id=worker_id)
    wanted = {_key(t) for t in tasks.values_list("task_id", flat=True)}
    if not wanted:
        return False
    rows = recovery.last_worker_in(backend.model.objects.using(backend.db_alias).filter(status="RUNNING"), [worker_id])
    return any(_key(str(pk)) in wanted for pk in rows.values_list("id", flat=True))
