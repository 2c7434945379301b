"""The three Django task setups, behind one small interface.

1. Django 6 ``django.tasks`` + django-tasks-db;
2. Django 5.2 + the ``django_tasks`` backport (0.12+) + django-tasks-db;
3. ``django_tasks`` 0.8 to 0.11 with its own ``django_tasks.backends.database``.

The framework that is live is the one the configured backend class belongs to, exactly as the
backend decides it (django-tasks-db uses ``django.tasks`` whenever it exists, even when the
backport is installed too), so the signals hooked and the models queried are always the ones the
db_worker really uses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

INSTALL_HINT = (
    "install django-tasks-db (pip install 'task-supervisor[db]'), add 'django_tasks_db' to "
    "INSTALLED_APPS and set TASKS = {'default': {'BACKEND': 'django_tasks_db.DatabaseBackend'}}"
)

# (package holding backend.py, models.py and the db_worker command, its Django app label path)
_DATABASE_BACKENDS = (
    "django_tasks_db",
    "django_tasks.backends.database",
)


class BackendError(Exception):
    """The configured task backend cannot be supervised; the message says what to change."""


@dataclass(frozen=True, slots=True)
class TaskBackend:
    """A database task backend, resolved: everything the supervisor needs to drive it."""

    alias: str
    framework: str  # "django.tasks" or "django_tasks"
    package: str  # "django_tasks_db" or "django_tasks.backends.database"
    signals: ModuleType  # has task_started / task_finished
    model: Any  # DBTaskResult

    @property
    def worker_command(self) -> str:
        return f"{self.package}.management.commands.db_worker"

    @property
    def db_alias(self) -> str:
        from django.db import router

        return router.db_for_write(self.model)


def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except (ImportError, ValueError):
        # django-tasks-db raises ValueError when neither framework is importable.
        return None


def _frameworks() -> list[tuple[str, ModuleType]]:
    """The task frameworks importable here, django.tasks first (it wins when both exist)."""
    found = []
    for name in ("django.tasks", "django_tasks"):
        base = _try_import(f"{name}.backends.base")
        if base is not None:
            found.append((name, base))
    return found


def backend_path(alias: str) -> str:
    from django.conf import settings

    tasks = getattr(settings, "TASKS", None)
    if not tasks:
        raise BackendError(f"settings.TASKS is not set, so no database task backend is configured; {INSTALL_HINT}.")
    if alias not in tasks:
        raise BackendError(
            f"Task backend {alias!r} is not in settings.TASKS (it has {', '.join(map(repr, tasks))}); "
            "set the pool's backend to one of those."
        )
    path = tasks[alias].get("BACKEND")
    if not isinstance(path, str):
        raise BackendError(f"settings.TASKS[{alias!r}] has no BACKEND; {INSTALL_HINT}.")
    return path


def resolve(alias: str = "default") -> TaskBackend:
    """The database backend behind a TASKS alias; BackendError if it is not one."""
    from django.apps import apps
    from django.utils.module_loading import import_string

    path = backend_path(alias)
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise BackendError(
            f"settings.TASKS[{alias!r}] BACKEND {path!r} does not import ({exc}); {INSTALL_HINT}."
        ) from None

    frameworks = _frameworks()
    if not frameworks:
        raise BackendError(
            f"No Django task framework is installed (Django 6's django.tasks or django-tasks); {INSTALL_HINT}."
        )
    framework = next((name for name, base in frameworks if issubclass(cls, base.BaseTaskBackend)), None)
    if framework is None:
        raise BackendError(f"settings.TASKS[{alias!r}] BACKEND {path!r} is not a task backend; {INSTALL_HINT}.")

    package = next((p for p in _DATABASE_BACKENDS if _is_subclass_of(cls, f"{p}.backend.DatabaseBackend")), None)
    if package is None:
        raise BackendError(
            f"settings.TASKS[{alias!r}] uses {path}, which is not a database backend: "
            f"task-supervisor runs db_worker processes; {INSTALL_HINT}."
        )
    if not apps.is_installed(package):
        raise BackendError(
            f"settings.TASKS[{alias!r}] uses {path}, but {package!r} is not in INSTALLED_APPS; add it and run migrate."
        )

    model = importlib.import_module(f"{package}.models").DBTaskResult
    return TaskBackend(
        alias=alias,
        framework=framework,
        package=package,
        signals=importlib.import_module(f"{framework}.signals"),
        model=model,
    )


def _is_subclass_of(cls: type, dotted: str) -> bool:
    module_name, _, attr = dotted.rpartition(".")
    module = _try_import(module_name)
    target = getattr(module, attr, None) if module else None
    return isinstance(target, type) and issubclass(cls, target)
