"""Rows a worker cannot run as written: recorded FAILED with the reason, and the child goes on.

Each bad row is made by enqueueing a good task and corrupting its row in the database before a
worker claims it (the supervisor starts afterwards), the way a deploy that renamed a task, a
hand-edited row or a buggy producer leaves them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from task_supervisor import events
from tests.chaos.harness import Figures, rows, unique_node
from tests.support import PROJECT, Database, SupervisorProcess, config_toml, wait_until

ONE_CHILD = """
[pools.default]
processes = 1
interval = "100ms"
"""
HAS_UNSERIALISABLE = "def unserialisable(" in (PROJECT / "tsapp" / "tasks.py").read_text()


@dataclass(frozen=True)
class Bad:
    """How to spoil an ``add(1, 2)`` row, and what the FAILED row must then say."""

    name: str
    update: dict[str, Any]  # column -> value, written over the enqueued row
    exception: str  # exception_class_path of the FAILED row
    reason: str  # in its traceback
    engines: tuple[str, ...] = ("sqlite", "postgres")


BAD_ROWS = [
    Bad(
        "task path no longer imports",
        {"task_path": "tsapp.tasks.gone"},
        "builtins.ImportError",
        'Module "tsapp.tasks" does not define a "gone" attribute/class',
    ),
    Bad(
        "task module gone",
        {"task_path": "tsapp.renamed.add"},
        "builtins.ModuleNotFoundError",
        "No module named 'tsapp.renamed'",
    ),
    Bad(
        "task path is not a task",
        {"task_path": "tsapp.tasks.os"},
        "django.core.exceptions.SuspiciousOperation",
        "does not point to a Task (tsapp.tasks.os)",
    ),
    Bad(
        "arguments do not fit",
        {"args_kwargs": {"args": [1, 2, 3], "kwargs": {}}},
        "builtins.TypeError",
        "add() takes 2 positional arguments but 3 were given",
    ),
    Bad(
        "keyword arguments that do not exist",
        {"args_kwargs": {"args": [], "kwargs": {"a": 1, "c": 2}}},
        "builtins.TypeError",
        "got an unexpected keyword argument 'c'",
    ),
    # django-tasks-db 0.13's db_worker alone raises out of its own failure path for the next two
    # (it reads ``task_result`` again after recording the row FAILED), and cannot even claim the
    # third: every child that met it died and the row stayed READY, blocking its queue.
    Bad("arguments are a JSON string", {"args_kwargs": "not an object"}, "builtins.TypeError", "string indices"),
    Bad("arguments lack args and kwargs", {"args_kwargs": {}}, "builtins.KeyError", "KeyError: 'args'"),
    Bad("worker_ids is not a list", {"worker_ids": 5}, "builtins.TypeError", "worker_ids"),
    # float("inf") is no JSON: SQLite's JSON_VALID check refuses it (PostgreSQL turns the
    # arguments into exact integers, so the sum stays finite there).
    Bad(
        "returns infinity",
        {"args_kwargs": {"args": [1e308, 1e308], "kwargs": {}}},
        "django.db.utils.IntegrityError",
        "JSON_VALID",
        engines=("sqlite",),
    ),
]


def spoil(bad: Bad) -> str:
    from tsapp import tasks

    result = tasks.add.enqueue(1, 2)
    rows().filter(id=result.id).update(**bad.update)
    return str(result.id)


def one_child(supervisor) -> tuple[SupervisorProcess, int]:
    sup = supervisor(config_toml(ONE_CHILD, node=unique_node()))
    # The pid the supervisor logs, not the first child psutil sees: a short-lived helper the
    # supervisor's libraries run at start (a find_library lookup, say) is a child too.
    return sup, sup.wait_event(events.CHILD_STARTED)["pid"]


def finished(task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def row() -> dict[str, Any] | None:
        found = rows().filter(id=task_id).values().first()
        return found if found and found["status"] in ("SUCCESSFUL", "FAILED") else None

    return wait_until(row, timeout, message=f"task {task_id} to finish")


def assert_failed_cleanly(row: dict[str, Any], bad: Bad) -> None:
    assert row["status"] == "FAILED", (bad.name, row)
    assert row["exception_class_path"] == bad.exception, (bad.name, row["exception_class_path"])
    assert bad.reason in row["traceback"], (bad.name, row["traceback"][-400:])


def assert_same_child_goes_on(sup: SupervisorProcess, pid: int, followers: list[str], worker_ids: set[str]) -> None:
    """The tasks after the bad rows ran, in the very process that met the bad rows."""
    for task_id in followers:
        row = finished(task_id)
        assert row["status"] == "SUCCESSFUL" and row["return_value"] == 4, row
        worker_ids.update(row["worker_ids"])
    assert len(worker_ids) == 1, worker_ids
    assert len(sup.events(events.CHILD_STARTED)) == 1, sup.tail()
    assert [c.pid for c in sup.children()] == [pid], sup.tail()


def test_bad_rows_fail_with_their_reason_and_the_child_goes_on(supervisor, db: Database):
    from tsapp import tasks

    cases = [bad for bad in BAD_ROWS if db.engine in bad.engines]
    began = time.monotonic()
    spoiled = {spoil(bad): bad for bad in cases}
    if HAS_UNSERIALISABLE:
        unserialisable = str(tasks.unserialisable.enqueue().id)  # type: ignore[attr-defined]
    sup, pid = one_child(supervisor)
    followers = [str(tasks.add.enqueue(2, 2).id) for _ in range(3)]

    worker_ids: set[str] = set()
    for task_id, bad in spoiled.items():
        row = finished(task_id)
        assert_failed_cleanly(row, bad)
        if isinstance(row["worker_ids"], list):  # a row that could not be claimed keeps what it had
            worker_ids.update(row["worker_ids"])
    if HAS_UNSERIALISABLE:
        row = finished(unserialisable)
        assert row["status"] == "FAILED" and row["exception_class_path"] == "builtins.TypeError", row
        assert "is not JSON serializable" in row["traceback"] and row["return_value"] is None, row
        worker_ids.update(row["worker_ids"])
    assert_same_child_goes_on(sup, pid, followers, worker_ids)

    Figures(
        test="bad rows",
        database=db.engine,
        tasks=len(spoiled) + len(followers) + HAS_UNSERIALISABLE,
        faults=[bad.name for bad in cases] + (["returns object()"] if HAS_UNSERIALISABLE else []),
        seconds=time.monotonic() - began,
        notes={"child_restarts": len(sup.events(events.CHILD_STARTED)) - 1},
    ).report()
