"""Admin pages of workflows: each workflow with its steps inline (state, task id, timings), read
only, and a "Cancel the selected workflows" action (the cancel permission of tasks)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from task_supervisor import models


class StepInline(admin.TabularInline):
    model = models.WorkflowStep
    fields = ("path", "task_path", "state", "task_result_id", "enqueued_at", "started_at", "finished_at", "error")
    readonly_fields = fields
    ordering = ("position",)
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(models.Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "state", "steps_done", "created_at", "finished_at", "failed_step")
    list_filter = ("state",)
    search_fields = ("id", "name")
    date_hierarchy = "created_at"
    inlines = (StepInline,)
    actions = ("cancel_workflows",)

    def get_queryset(self, request: Any) -> Any:
        from django.db.models import Count, Q

        done = Q(steps__state__in=("SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"))
        return super().get_queryset(request).annotate(done=Count("steps", filter=done), total=Count("steps"))

    @admin.display(description="steps done")
    def steps_done(self, obj: Any) -> str:
        return f"{obj.done} of {obj.total}"

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_cancel_permission(self, request: Any) -> bool:
        from task_supervisor.admin import PERM

        return bool(request.user.has_perm(PERM["cancel"]))

    @admin.action(description="Cancel the selected workflows", permissions=["cancel"])
    def cancel_workflows(self, request: Any, queryset: Any) -> None:
        from task_supervisor.admin import actor, report
        from task_supervisor.workflows import ops

        for pk in queryset.filter(state="RUNNING").values_list("pk", flat=True)[:100]:
            report(self, request, lambda pk=pk: ops.cancel(str(pk), actor=actor(request)))
