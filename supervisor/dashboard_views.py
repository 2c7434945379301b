"""The dashboard's admin pages: /admin/task_supervisor/dashboard/ (the page), data/ (its JSON,
fetched every REFRESH_MS by the page's script), dashboard.js (that script, shipped in the package,
so the page needs no CDN nor collectstatic) and act/ (the buttons: task_supervisor.ops actions).

The page is a ModelAdmin of the ``Dashboard`` proxy model: the admin lists it with the app, staff
login comes with ``admin_view``, and its ``view_dashboard`` permission guards every URL; each
action also needs the permission of the operation (``admin.PERM``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from task_supervisor import compat, dashboard, models, ops

REFRESH_MS = 3000  # the page's refresh period
SCRIPT = Path(__file__).resolve().parent / "static" / "task_supervisor" / "dashboard.js"
VERBS = {  # action -> the permission it needs (a key of admin.PERM)
    "cancel": "cancel",
    "retry": "retry",
    "pause": "pause",
    "resume": "pause",
    "run": "schedule",
}


def permitted(request: Any) -> set[str]:
    """The operations (admin.PERM keys) the user may run."""
    from task_supervisor.admin import PERM

    return {verb for verb, perm in PERM.items() if request.user.has_perm(perm)}


class DashboardAdmin(admin.ModelAdmin):
    """No rows to list: the changelist URL is the live dashboard."""

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.page), name="task_supervisor_dashboard_changelist"),
            path("data/", wrap(self.data), name="task_supervisor_dashboard_data"),
            path("dashboard.js", wrap(self.script), name="task_supervisor_dashboard_script"),
            path("act/", wrap(require_POST(self.act)), name="task_supervisor_dashboard_act"),
        ]

    def _check(self, request: Any) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied("You may not view the task supervisor dashboard.")

    def page(self, request: Any) -> Any:
        self._check(request)
        context = {
            **self.admin_site.each_context(request),
            "title": "Task supervisor dashboard",
            "opts": self.model._meta,
            "config": {
                "data": reverse("admin:task_supervisor_dashboard_data"),
                "act": reverse("admin:task_supervisor_dashboard_act"),
                "refreshMs": REFRESH_MS,
            },
        }
        return TemplateResponse(request, "admin/task_supervisor/dashboard/index.html", context)

    def data(self, request: Any) -> Any:
        self._check(request)
        try:
            filters = dashboard.Filters.from_query(request.GET)
        except ValueError as exc:
            return JsonResponse({"error": str(exc)}, status=400)
        try:
            data = dashboard.collect(filters, permitted(request))
        except compat.BackendError as exc:  # TASKS has no database backend to show
            return JsonResponse({"error": str(exc)}, status=503)
        return JsonResponse(data)

    def script(self, request: Any) -> Any:
        self._check(request)
        response = HttpResponse(SCRIPT.read_bytes(), content_type="text/javascript; charset=utf-8")
        response["Cache-Control"] = "private, max-age=300"
        return response

    def act(self, request: Any) -> Any:
        """One button: ``verb`` (cancel, retry, pause, resume, run) on ``target`` (a task id, a
        queue or a schedule), through task_supervisor.ops as the logged-in user."""
        from task_supervisor.admin import actor

        self._check(request)
        verb, target = request.POST.get("verb", ""), request.POST.get("target", "").strip()
        if verb not in VERBS:
            return JsonResponse({"ok": False, "message": f"Unknown action {verb!r}."}, status=400)
        if VERBS[verb] not in permitted(request):
            return JsonResponse({"ok": False, "message": f"You may not {verb} here."}, status=403)
        if not target:
            return JsonResponse({"ok": False, "message": f"Say what to {verb}."}, status=400)
        who = actor(request)
        calls = {
            "cancel": lambda: ops.cancel([target], actor=who),
            "retry": lambda: ops.retry([target], actor=who),
            "pause": lambda: ops.pause([target], actor=who),
            "resume": lambda: ops.resume([target], actor=who),
            "run": lambda: ops.run_schedule(target, actor=who),
        }
        try:
            outcome = calls[verb]()
        except ops.OperationError as exc:
            return JsonResponse({"ok": False, "message": str(exc)}, status=400)
        return JsonResponse({"ok": True, "message": outcome.message})


admin.site.register(models.Dashboard, DashboardAdmin)
