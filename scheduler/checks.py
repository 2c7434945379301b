"""Django system checks for settings.PERIODIC_TASKS: ``manage.py check`` reports what
``task-supervisor check`` and ``run`` do, under the same ids."""

from __future__ import annotations

from typing import Any

from django.core import checks


@checks.register("task_supervisor")
def check_periodic_tasks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.conf import settings

    from task_supervisor.scheduler import spec

    _, problems = spec.load(settings)
    return [checks.Error(problem.message, hint=None, obj=spec.SETTING, id=problem.id) for problem in problems]
