from __future__ import annotations

from django.apps import AppConfig


class TaskSupervisorConfig(AppConfig):
    name = "task_supervisor"
    verbose_name = "Task supervisor"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # System checks for PERIODIC_TASKS register themselves on import.
        from task_supervisor.scheduler import checks  # noqa: F401
