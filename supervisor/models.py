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
