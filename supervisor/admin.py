"""Admin pages: node heartbeats, task attempts and retries, the scheduler's run log."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from task_supervisor import models


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(models.NodeHeartbeat)
class NodeHeartbeatAdmin(ReadOnly):
    list_display = ("node", "pid", "pools", "started_at", "last_seen")
    ordering = ("node",)


@admin.register(models.ScheduleRun)
class ScheduleRunAdmin(ReadOnly):
    """The run log, headed by a table of every schedule with its last and next run."""

    list_display = ("schedule", "slot", "task_result_id", "enqueued_at", "node")
    list_filter = ("schedule",)
    search_fields = ("schedule", "task_result_id")
    date_hierarchy = "slot"
    change_list_template = "admin/task_supervisor/schedulerun/change_list.html"

    def changelist_view(self, request: Any, extra_context: dict[str, Any] | None = None) -> Any:
        return super().changelist_view(request, {**(extra_context or {}), "schedules": schedule_rows()})


def schedule_rows() -> list[dict[str, Any]]:
    """Each schedule of settings.PERIODIC_TASKS: its task, timing, last run in the log and next slot."""
    import datetime as dt

    from django.conf import settings
    from django.db.models import Max

    from task_supervisor.scheduler import spec

    schedules, _ = spec.load(settings, resolve_tasks=False)
    last = dict(
        models.ScheduleRun.objects.filter(schedule__in=[s.name for s in schedules])
        .values_list("schedule")
        .annotate(last=Max("slot"))
    )
    now = dt.datetime.now(dt.UTC)
    rows = []
    for schedule in schedules:
        upcoming = schedule.next_slots(now, 1) if schedule.enabled else []
        rows.append(
            {
                "name": schedule.name,
                "task": schedule.task_path,
                "when": schedule.when,
                "timezone": schedule.zone.key,
                "enabled": schedule.enabled,
                "last": _in_zone(last.get(schedule.name), schedule.zone),
                "next": _in_zone(upcoming[0] if upcoming else None, schedule.zone),
            }
        )
    return rows


if hasattr(models, "TaskAttempts"):

    @admin.register(models.TaskAttempts)
    class TaskAttemptsAdmin(ReadOnly):
        list_display = ("id", "task_path", "status", "attempts", "next_attempt", "last_error", "last_worker")
        list_filter = ("status", "queue_name")
        search_fields = ("id", "task_path")

        @admin.display(description="attempts")
        def attempts(self, obj: Any) -> int:
            return len(obj.worker_ids or [])

        @admin.display(description="next attempt")
        def next_attempt(self, obj: Any) -> Any:
            """When a retried task runs again: a READY row that has run before, with a run_after."""
            if obj.status != "READY" or not obj.worker_ids or obj.run_after is None or obj.run_after.year >= 9999:
                return "-"
            return obj.run_after

        @admin.display(description="last error")
        def last_error(self, obj: Any) -> str:
            return obj.exception_class_path or "-"

        @admin.display(description="last worker")
        def last_worker(self, obj: Any) -> str:
            return obj.worker_ids[-1] if obj.worker_ids else "-"


def _in_zone(moment: Any, zone: Any) -> str | None:
    """A time as text in the schedule's own zone (the admin would show it in the site's)."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else None
