"""The supervisor's own tables: node heartbeats and the scheduler's run log."""

from __future__ import annotations

from django.db import models


class NodeHeartbeat(models.Model):
    """One row per running supervisor, refreshed while it lives.

    Other supervisors treat the RUNNING tasks of a node whose ``last_seen`` is too old as lost.
    """

    node = models.CharField(max_length=64, primary_key=True)
    pid = models.IntegerField()
    pools = models.JSONField(default=list)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "node heartbeat"

    def __str__(self) -> str:
        return self.node


class ScheduleRun(models.Model):
    """One row per (schedule, slot) enqueued; the unique key makes each slot fire once."""

    schedule = models.CharField(max_length=200)
    slot = models.DateTimeField(help_text="The slot's time, in UTC.")
    task_result_id = models.CharField(max_length=64, blank=True)
    enqueued_at = models.DateTimeField(auto_now_add=True)
    node = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name = "schedule run"
        ordering = ["-slot"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "slot"], name="task_supervisor_slot_once"),
        ]
        indexes = [models.Index(fields=["schedule", "-slot"], name="task_supervisor_sched_idx")]

    def __str__(self) -> str:
        return f"{self.schedule} @ {self.slot.isoformat()}"


def _task_result_model() -> type[models.Model] | None:
    """The installed database backend's task result model, whichever package provides it."""
    from django.apps import apps

    if apps.is_installed("django_tasks_db"):
        from django_tasks_db.models import DBTaskResult

        return DBTaskResult
    if apps.is_installed("django_tasks.backends.database"):
        from django_tasks.backends.database.models import DBTaskResult

        return DBTaskResult
    return None


_TaskResult = _task_result_model()

if _TaskResult is not None:

    class TaskAttempts(_TaskResult):  # type: ignore[valid-type,misc]
        """The backend's task rows, seen for attempts: how many, and when the next one runs."""

        class Meta:
            proxy = True
            verbose_name = "task attempts"
            verbose_name_plural = "task attempts"
