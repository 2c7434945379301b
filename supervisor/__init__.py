"""task-supervisor: pools, timeouts, lost-task recovery and a cron scheduler for Django's
database task workers."""

from __future__ import annotations

from task_supervisor.exceptions import LeaseExpired, TaskCancelled, TaskTimeout, WorkerLost
from task_supervisor.unique import enqueue_unique

__version__ = "0.1.0"

__all__ = ["LeaseExpired", "TaskCancelled", "TaskTimeout", "WorkerLost", "__version__", "enqueue_unique"]
