"""Setting Django up from config.toml and checking, before any child starts, what would stop them."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from task_supervisor import compat, exitcodes, sentry
from task_supervisor.config import Config
from task_supervisor.exceptions import one_line

# Bound connection attempts (psycopg reads it) so an unreachable database is an error, not a hang.
DEFAULT_CONNECT_TIMEOUT = "10"  # seconds


class StartupError(Exception):
    """Something the user must fix before the supervisor can run; carries a named exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def setup_django(config: Config) -> None:
    for folder in reversed(config.pythonpath_dirs()):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    os.environ["DJANGO_SETTINGS_MODULE"] = config.django.settings
    os.environ.setdefault("PGCONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
    try:
        importlib.import_module(config.django.settings)
    except ImportError as exc:
        raise StartupError(
            exitcodes.EX_SETTINGS,
            f"django.settings {config.django.settings!r} does not import ({exc}); "
            "check [django] settings and pythonpath in the config.",
        ) from None
    except Exception as exc:
        raise StartupError(
            exitcodes.EX_SETTINGS,
            f"django.settings {config.django.settings!r} raised {type(exc).__name__}: {exc}.",
        ) from None
    import django

    try:
        django.setup()
    except Exception as exc:
        raise StartupError(
            exitcodes.EX_SETTINGS, f"Django could not start with {config.django.settings}: {type(exc).__name__}: {exc}."
        ) from None
    sentry.install()  # when the settings initialised sentry_sdk: failures reported once each


def resolve_backends(config: Config) -> dict[str, compat.TaskBackend]:
    """Each pool's database backend; StartupError naming the pool if one cannot be used."""
    backends: dict[str, compat.TaskBackend] = {}
    problems = []
    for name, pool in config.pools.items():
        try:
            backends[name] = compat.resolve(pool.backend)
        except compat.BackendError as exc:
            problems.append(f"pools.{name}.backend {pool.backend!r}: {exc}")
    if problems:
        raise StartupError(exitcodes.EX_SETTINGS, "\n".join(problems))
    return backends


def check_retries(config: Config, backends: dict[str, compat.TaskBackend]) -> None:
    """[retries] names tasks that import and exception classes that exist."""
    from task_supervisor.chores import retry

    framework = next(iter(backends.values())).framework if backends else "django.tasks"
    task_class = getattr(importlib.import_module(framework), "Task", None)
    problems = retry.problems(config.retries, task_class)
    problems += retry.pool_problems({name: pool.retries for name, pool in config.pools.items()})
    if problems:
        raise StartupError(exitcodes.EX_CONFIG, "\n".join(problems))


def check_limits(config: Config, backends: dict[str, compat.TaskBackend]) -> None:
    """[limits] name tasks that import and, as their key, one of the task's arguments."""
    from task_supervisor import flowinfo

    framework = next(iter(backends.values())).framework if backends else "django.tasks"
    problems = flowinfo.problems(config.limits, getattr(importlib.import_module(framework), "Task", None))
    if problems:
        raise StartupError(exitcodes.EX_CONFIG, "\n".join(problems))


def load_schedules(config: Config) -> list:
    """settings.PERIODIC_TASKS, checked; StartupError listing every problem, under its check id.
    With the scheduler disabled they are checked all the same, and none is returned."""
    from django.conf import settings

    from task_supervisor.scheduler import spec

    schedules, problems = spec.load(settings)
    if problems:
        # Django's own checks fail on these too, so a bare db_worker would refuse to start.
        raise StartupError(exitcodes.EX_SETTINGS, "\n".join(map(str, problems)))
    return schedules if config.scheduler.enabled else []


def run_system_checks() -> list[str]:
    """Django's system checks, run once here instead of in every child (which db_worker does
    at each start); StartupError listing the errors, else the warnings to log."""
    from django.core import checks

    # PERIODIC_TASKS problems (task_supervisor.E0xx) are load_schedules()'s to report.
    messages = [m for m in checks.run_checks() if not m.is_silenced() and not str(m.id).startswith("task_supervisor.")]
    errors = [str(m) for m in messages if m.is_serious()]
    if errors:
        raise StartupError(
            exitcodes.EX_SETTINGS,
            "Django's system checks found errors (db_worker would refuse to start):\n" + "\n".join(errors),
        )
    return [str(m) for m in messages]


# The child side's modules a worker child imports as it boots: about 14 ms in every new child
# (flow alone 6 ms) when the supervisor has not loaded them before forking.
CHILD_MODULES = (
    "task_supervisor.worker.failures",
    "task_supervisor.worker.fastpath",
    "task_supervisor.worker.fence",
    "task_supervisor.worker.flow",
    "task_supervisor.worker.proctitle",
    "task_supervisor.worker.rowguard",
    "task_supervisor.worker.steps",
    "task_supervisor.workflows.handover",
)


def warm_up(backends: dict[str, compat.TaskBackend]) -> None:
    """Import what every child needs before the first fork, so children share it and start fast."""
    for backend in backends.values():
        importlib.import_module(backend.worker_command)
    for module in CHILD_MODULES:
        importlib.import_module(module)


def check_database(backends: dict[str, compat.TaskBackend]) -> None:
    """Every database a pool uses answers and has the task results table."""
    from django.db import DatabaseError, connections

    seen: set[tuple[str, str]] = set()
    for backend in backends.values():
        key = (backend.db_alias, backend.model._meta.db_table)
        if key in seen:
            continue
        seen.add(key)
        connection = connections[backend.db_alias]
        try:
            connection.ensure_connection()
            tables = connection.introspection.table_names()
        except DatabaseError as exc:
            raise StartupError(
                exitcodes.EX_DATABASE,
                f"Database {backend.db_alias!r} ({describe_database(backend.db_alias)}) is unreachable: "
                f"{one_line(exc)}; start it or fix DATABASES in your settings.",
            ) from None
        finally:
            connection.close()
        if backend.model._meta.db_table not in tables:
            raise StartupError(
                exitcodes.EX_DATABASE,
                f"Database {backend.db_alias!r} has no table {backend.model._meta.db_table}; "
                "run `manage.py migrate` first.",
            )


def database_advice(backends: dict[str, compat.TaskBackend]) -> tuple[list[str], list[str]]:
    """(problems, warnings): MariaDB and MySQL settings that break the guarantees, or hurt them.

    A database that does not answer is check_database's to report; it is skipped here.
    """
    from django.db import DatabaseError, connections

    problems: list[str] = []
    warnings: list[str] = []
    for alias in sorted({backend.db_alias for backend in backends.values()}):
        connection = connections[alias]
        if connection.vendor != "mysql":
            continue
        tables = [b.model._meta.db_table for b in backends.values() if b.db_alias == alias]
        try:
            connection.ensure_connection()
            broken, risky = _mysql_advice(connection, alias, [*tables, *_own_tables()])
        except DatabaseError:
            continue
        finally:
            connection.close()
        problems += broken
        warnings += risky
    return problems, warnings


def _own_tables() -> list[str]:
    from django.apps import apps

    if not apps.is_installed("task_supervisor"):
        return []
    return [model._meta.db_table for model in apps.get_app_config("task_supervisor").get_models()]


def _mysql_advice(connection: Any, alias: str, tables: list[str]) -> tuple[list[str], list[str]]:
    flavour = "MariaDB" if connection.mysql_is_mariadb else "MySQL"
    # MariaDB before 11.1 names the variable tx_isolation only; MySQL 8 transaction_isolation only.
    old_name = connection.mysql_is_mariadb and connection.mysql_version < (11, 1)
    variable = "tx_isolation" if old_name else "transaction_isolation"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT @@SESSION.{variable}")
        (level,) = cursor.fetchone()
        marks = ", ".join(["%s"] * len(tables))
        cursor.execute(
            "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({marks}) ORDER BY TABLE_NAME",
            tables,
        )
        engines = [(name, engine) for name, engine in cursor.fetchall() if (engine or "").lower() != "innodb"]
    level = str(level).replace("-", " ").upper()
    fix = "set its OPTIONS isolation_level to 'read committed' (Django's default) or 'repeatable read'"
    problems, warnings = [], []
    if level == "READ UNCOMMITTED":
        problems.append(
            f"Database {alias!r} ({flavour}) runs at READ UNCOMMITTED: the supervisor and the fenced writes "
            f"could act on claims and verdicts that are then rolled back; {fix}."
        )
    elif level == "SERIALIZABLE":
        warnings.append(
            f"Database {alias!r} ({flavour}) runs at SERIALIZABLE: every read in a transaction takes shared "
            f"locks, so the supervisor's queue-depth reads make claims skip READY rows and deadlocks likelier; {fix}."
        )
    for table, engine in engines:
        problems.append(
            f"Table {table} of database {alias!r} ({flavour}) uses the {engine} storage engine, which has no "
            "transactions or row locks: two children could claim one task, and a lost or retried row be "
            f"handled twice; convert it with ALTER TABLE {table} ENGINE=InnoDB."
        )
    return problems, warnings


def describe_database(alias: str) -> str:
    """Engine, host and name of a database, never its password."""
    from django.db import connections

    settings = connections.settings[alias]
    engine = settings.get("ENGINE", "").rsplit(".", 1)[-1]
    host = settings.get("HOST") or "local"
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return (
        f"{engine} {settings.get('NAME')} at {host}{port}" if engine != "sqlite3" else f"sqlite3 {settings.get('NAME')}"
    )
