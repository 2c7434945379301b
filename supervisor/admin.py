"""Admin pages: node heartbeats, task attempts and retries, the scheduler's run log, and the
operator's pages: cancel and retry on task rows, queue pauses, schedules run now / disable /
enable, cancel requests and the audit log. Each button calls ``task_supervisor.ops`` as the
logged-in user and needs its own permission; a staff user without it sees the pages only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpResponseForbidden, HttpResponseRedirect
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from task_supervisor import models, ops

PERM = {
    "cancel": "task_supervisor.cancel_task",
    "retry": "task_supervisor.retry_task",
    "pause": "task_supervisor.pause_queue",
    "schedule": "task_supervisor.run_schedule",
}


def actor(request: Any) -> str:
    return f"admin:{request.user.get_username()}"


def report(modeladmin: Any, request: Any, call: Any) -> None:
    """Run an operator action and say how it went, in the admin's messages."""
    try:
        outcome = call()
    except ops.OperationError as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
    else:
        modeladmin.message_user(request, outcome.message, messages.SUCCESS)


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

    list_display = ("schedule", "slot", "manual", "task_result_id", "enqueued_at", "node")
    list_filter = ("schedule", "manual")
    search_fields = ("schedule", "task_result_id")
    date_hierarchy = "slot"
    change_list_template = "admin/task_supervisor/schedulerun/change_list.html"

    def changelist_view(self, request: Any, extra_context: dict[str, Any] | None = None) -> Any:
        context = {"schedules": schedule_rows(), "can_run_schedules": request.user.has_perm(PERM["schedule"])}
        return super().changelist_view(request, {**(extra_context or {}), **context})

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(require_POST(self.schedule_action))
        return [
            path("schedule/<str:name>/<str:verb>/", view, name="task_supervisor_schedule_action"),
            *super().get_urls(),
        ]

    def schedule_action(self, request: Any, name: str, verb: str) -> Any:
        """The buttons of the schedules table: run now, disable, enable."""
        if not request.user.has_perm(PERM["schedule"]):
            return HttpResponseForbidden("You may not run, disable or enable schedules.")
        calls = {
            "run": lambda: ops.run_schedule(name, actor=actor(request)),
            "disable": lambda: ops.set_schedule_enabled(name, False, actor=actor(request)),
            "enable": lambda: ops.set_schedule_enabled(name, True, actor=actor(request)),
        }
        if verb not in calls:
            return HttpResponseForbidden("Unknown schedule action.")
        report(self, request, calls[verb])
        return HttpResponseRedirect(reverse("admin:task_supervisor_schedulerun_changelist"))


def schedule_rows() -> list[dict[str, Any]]:
    """Each schedule of settings.PERIODIC_TASKS: its task, timing, last run in the log and next slot."""
    import datetime as dt

    from django.conf import settings
    from django.db.models import Max

    from task_supervisor.scheduler import spec

    schedules, _ = spec.load(settings, resolve_tasks=False)
    overrides = ops.schedule_overrides()
    last = dict(
        models.ScheduleRun.objects.filter(schedule__in=[s.name for s in schedules], manual=False)
        .values_list("schedule")
        .annotate(last=Max("slot"))
    )
    now = dt.datetime.now(dt.UTC)
    rows = []
    for schedule in schedules:
        override = overrides.get(schedule.name)
        enabled = override.enabled if override else schedule.enabled
        upcoming = schedule.next_slots(now, 1) if enabled else []
        rows.append(
            {
                "name": schedule.name,
                "task": schedule.task_path,
                "when": schedule.when,
                "timezone": schedule.zone.key,
                "enabled": enabled,
                "override": f"{'enabled' if enabled else 'disabled'} by {override.changed_by}" if override else "",
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
        actions = ("cancel_tasks", "retry_tasks", "retry_tasks_as_new", "why_not_taken")

        def has_cancel_permission(self, request: Any) -> bool:
            return bool(request.user.has_perm(PERM["cancel"]))

        def has_retry_permission(self, request: Any) -> bool:
            return bool(request.user.has_perm(PERM["retry"]))

        @admin.action(description="Cancel the selected tasks", permissions=["cancel"])
        def cancel_tasks(self, request: Any, queryset: Any) -> None:
            report(self, request, lambda: ops.cancel(_ids(queryset), actor=actor(request), backend=_backend(queryset)))

        @admin.action(description="Retry the selected FAILED tasks on their rows", permissions=["retry"])
        def retry_tasks(self, request: Any, queryset: Any) -> None:
            report(self, request, lambda: ops.retry(_ids(queryset), actor=actor(request), backend=_backend(queryset)))

        @admin.action(description="Retry the selected FAILED tasks as new tasks", permissions=["retry"])
        def retry_tasks_as_new(self, request: Any, queryset: Any) -> None:
            report(
                self,
                request,
                lambda: ops.retry(_ids(queryset), as_new=True, actor=actor(request), backend=_backend(queryset)),
            )

        @admin.action(description="Say why the selected READY tasks are not being taken")
        def why_not_taken(self, request: Any, queryset: Any) -> None:
            from task_supervisor import compat, flowinfo

            backend = compat.resolve(_backend(queryset))
            limits = flowinfo.declared_limits(backend)
            for task_id in _ids(queryset)[:50]:
                self.message_user(request, flowinfo.explain(backend, limits, task_id), messages.INFO)

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


def _ids(queryset: Any) -> list[str]:
    return [str(pk) for pk in queryset.values_list("pk", flat=True)]


def _backend(queryset: Any) -> str:
    """The task backend of the selected rows (ops refuses rows of another one, by name)."""
    return str(queryset.values_list("backend_name", flat=True).first() or "default")


@admin.register(models.QueuePause)
class QueuePauseAdmin(admin.ModelAdmin):
    """Paused queues: add one to pause it on every node, resume with the action."""

    list_display = ("queue", "paused_by", "since")
    fields = ("queue",)
    actions = ("resume_queues",)

    def has_add_permission(self, request: Any) -> bool:
        return bool(request.user.has_perm(PERM["pause"]))

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_pause_permission(self, request: Any) -> bool:
        return bool(request.user.has_perm(PERM["pause"]))

    def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
        outcome = ops.pause([obj.queue], actor=actor(request))
        obj.pk = models.QueuePause.objects.get(queue=obj.queue).pk
        self.message_user(request, outcome.message, messages.SUCCESS)

    @admin.action(description="Resume the selected queues", permissions=["pause"])
    def resume_queues(self, request: Any, queryset: Any) -> None:
        queues = list(queryset.values_list("queue", flat=True))
        report(self, request, lambda: ops.resume(queues, actor=actor(request)))


@admin.register(models.ScheduleOverride)
class ScheduleOverrideAdmin(ReadOnly):
    list_display = ("schedule", "enabled", "changed_by", "changed_at")


@admin.register(models.CancelRequest)
class CancelRequestAdmin(ReadOnly):
    list_display = ("task_id", "worker_id", "requested_by", "requested_at", "handled_at")
    search_fields = ("task_id",)


@admin.register(models.Action)
class ActionAdmin(ReadOnly):
    """The audit log of operator actions, from the CLI, the admin and Python."""

    list_display = ("at", "actor", "verb", "rows", "detail")
    list_filter = ("verb",)
    search_fields = ("actor",)
    date_hierarchy = "at"

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(models.FlowKey)
class FlowKeyAdmin(ReadOnly):
    """[limits]: each key seen, its slots taken now, and how many READY tasks it holds back and why."""

    list_display = ("limit", "key", "declared_as", "running_now", "held_back", "held_because", "updated_at")
    list_filter = ("limit",)
    search_fields = ("limit", "key")

    def _entry(self, obj: Any) -> Any:
        return _flow_census(obj.limit, obj.declared).get(obj.key)

    @admin.display(description="limit as declared")
    def declared_as(self, obj: Any) -> str:
        from task_supervisor.wire.limits import from_declaration

        limit = from_declaration(obj.limit, obj.declared or "")
        return limit.describe() if limit else "-"

    @admin.display(description="running")
    def running_now(self, obj: Any) -> int:
        entry = self._entry(obj)
        return entry.running if entry else 0

    @admin.display(description="held back")
    def held_back(self, obj: Any) -> int:
        entry = self._entry(obj)
        return entry.held_back if entry else 0

    @admin.display(description="why")
    def held_because(self, obj: Any) -> str:
        entry = self._entry(obj)
        return entry.reason if entry and entry.reason else "-"


_CENSUS_TTL = 2.0  # seconds a census of one limit serves the rows of a changelist
_censuses: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}


def _flow_census(path: str, declared: str) -> dict[str, Any]:
    """Key -> KeyCensus of one limit, read once per page (not once per row)."""
    import time

    from task_supervisor import compat, flowinfo
    from task_supervisor.wire.limits import from_declaration

    cached = _censuses.get((path, declared))
    if cached is not None and time.monotonic() - cached[0] < _CENSUS_TTL:
        return cached[1]
    limit = from_declaration(path, declared or "")
    keys: dict[str, Any] = {}
    if limit is not None:
        try:
            keys = flowinfo.census(compat.resolve("default"), [limit])[0].keys
        except Exception:  # a task path that no longer imports here: nothing to count
            keys = {}
    _censuses[(path, declared)] = (time.monotonic(), keys)
    return keys


@admin.register(models.UniqueTask)
class UniqueTaskAdmin(ReadOnly):
    list_display = ("key", "task_path", "scope", "until", "task_result_id", "created_at")
    search_fields = ("key", "task_path", "task_result_id")


# The live dashboard, /admin/task_supervisor/dashboard/ (a module of its own).
from task_supervisor import dashboard_views  # noqa: E402, F401
from task_supervisor.workflows import admin as workflows_admin  # noqa: E402, F401  (workflows' pages)
