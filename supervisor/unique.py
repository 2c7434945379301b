"""Unique tasks: ``enqueue_unique`` adds a task only if its key has no task inside its scope.

The key's ``UniqueTask`` row is read under its lock and written in the same transaction as the
task row (the scheduler's slot claim is the model), so any number of processes enqueueing the same
key at once get one task: on SQLite the transaction takes the write lock up front (BEGIN
IMMEDIATE); elsewhere the key's unique index makes a second insert wait for the first transaction
and then fail, and the loser reads the winner's row. Whether a key is in scope is read from the
task row itself ("ready": still READY; "active": READY or RUNNING) or from the database's clock (a
duration), so a crashed worker, a recovered row or a pruned one never leaves a key taken forever.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

SCOPES = ("ready", "active")
# "NEW": READY as older database backends of django-tasks name it (the scheduler counts it too).
STATUSES = {"ready": ("READY", "NEW"), "active": ("READY", "NEW", "RUNNING")}
ATTEMPTS = 5  # transactions tried when another enqueue of the key keeps winning the insert
KEY_MAX_LENGTH = 200


def scope_of(unique_while: str | float | int) -> tuple[str, float | None]:
    """ "ready", "active" or a duration ("1h", seconds) -> (scope, seconds); ValueError otherwise."""
    from task_supervisor.config import parse_duration

    if unique_while in SCOPES:
        return str(unique_while), None
    try:
        seconds = parse_duration(unique_while)
    except ValueError as exc:
        raise ValueError(
            f'unique_while must be "ready", "active" or a duration such as "1h", got {unique_while!r} ({exc}).'
        ) from None
    if seconds <= 0:
        raise ValueError(f"unique_while must be a duration longer than 0, got {unique_while!r}.")
    return "for", seconds


def enqueue_unique(
    task: Any, /, *args: Any, unique_key: str, unique_while: str | float = "active", **kwargs: Any
) -> Any:
    """``task.enqueue(*args, **kwargs)``, unless a task enqueued under ``unique_key`` is still in scope:
    then that task's result. ``unique_while``: "ready" (while the first is READY), "active" (READY
    or RUNNING, the default) or a duration such as "1h" (that long after the first enqueue)."""
    from django.db import IntegrityError

    from task_supervisor import compat
    from task_supervisor.scheduler.runner import write_transaction

    if not isinstance(unique_key, str) or not unique_key or len(unique_key) > KEY_MAX_LENGTH:
        raise ValueError(f"unique_key must be a string of 1 to {KEY_MAX_LENGTH} characters, got {unique_key!r}.")
    scope, seconds = scope_of(unique_while)
    backend = compat.resolve(task.backend)
    for attempt in range(ATTEMPTS):
        try:
            with write_transaction(backend.db_alias):
                return _enqueue_once(task, backend, unique_key, scope, seconds, args, kwargs)
        except IntegrityError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _enqueue_once(
    task: Any, backend: Any, key: str, scope: str, seconds: float | None, args: tuple, kwargs: dict
) -> Any:
    from django.db.models.functions import Now

    from task_supervisor.models import UniqueTask

    alias = backend.db_alias
    rows = UniqueTask.objects.using(alias)
    current = rows.select_for_update().filter(key=key).first()
    if current is not None and in_scope(current, backend):
        return task.get_result(current.task_result_id)
    result = task.enqueue(*args, **kwargs)
    until = Now() + dt.timedelta(seconds=seconds) if seconds is not None else None
    fields = {
        "task_result_id": str(result.id),
        "task_path": _path(task),
        "scope": scope,
        "until": until,
        "created_at": Now(),
    }
    if current is None:
        rows.create(key=key, **fields)  # IntegrityError if another transaction inserted it meanwhile
    else:
        rows.filter(pk=current.pk).update(**fields)
    return result


def in_scope(row: Any, backend: Any) -> bool:
    """Whether the task a UniqueTask row stands for still keeps its key taken."""
    from django.db.models.functions import Now

    from task_supervisor.models import UniqueTask

    alias = backend.db_alias
    if row.scope == "for":
        return UniqueTask.objects.using(alias).filter(pk=row.pk, until__gt=Now()).exists()
    statuses = STATUSES.get(row.scope, STATUSES["active"])
    tasks = backend.model._base_manager.using(alias)
    try:
        return tasks.filter(pk=row.task_result_id, status__in=statuses).exists()
    except Exception:  # an id this backend cannot read (another backend's row): not in scope
        return False


def _path(task: Any) -> str:
    return str(getattr(task, "module_path", "") or getattr(task, "name", ""))[:200]
