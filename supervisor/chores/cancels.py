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
