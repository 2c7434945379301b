"""Finishing the rows of tasks whose worker died, and the node heartbeats that find them.

Every row is finished by a conditional update inside a locked transaction: the row must still be
RUNNING under the same worker id, so two supervisors racing for one row never both handle it,
and a row that finished or was claimed again in the meantime is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import math
import os
import random
import weakref
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from task_supervisor.chores import timebox
from task_supervisor.chores.retry import matches, retry_delay
from task_supervisor.compat import TaskBackend
from task_supervisor.config import RetryPolicy

PolicyFor = Callable[[str], "RetryPolicy | None"]  # task path -> its retry policy

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 2000  # the supervisor's own queries never hold its loop longer than this
# Seconds MariaDB keeps a session whose transaction sits idle. No transaction of ours outlives
# the chores' time box (2.5 s) unless the process is frozen; a client cut off behind a proxy that
# keeps the server's side open is, and its row locks (its own heartbeat row among them) must not
# stall the fresh connection that retries the chores.
IDLE_TRANSACTION_TIMEOUT_S = 5
WORKER_LOST = "task_supervisor.WorkerLost"
TASK_TIMEOUT = "task_supervisor.TaskTimeout"


@dataclass(frozen=True, slots=True)
class LostTask:
    """A row to finish: the task a dead worker was running, and why it ended."""

    worker_id: str
    task_id: str | None  # None: find the row by worker id (it may have died before reporting)
    message: str
    exception_path: str = WORKER_LOST
    on_worker_lost: str = "fail"  # "fail" or "requeue"
    max_attempts: int = 3


@dataclass(frozen=True, slots=True)
class FailedTask:
    """A task its child reported FAILED: retried if its policy says so."""

    worker_id: str
    task_id: str
    path: str
    exception_path: str


@dataclass(frozen=True, slots=True)
class Outcome:
    task_id: str
    status: str  # "FAILED" or "READY"
    attempts: int
    path: str = ""
    run_after: datetime | None = None  # set when retried later
    last_attempt: bool = False  # a retry policy applied but its attempts ran out
    queue: str = ""  # the row's queue, for reports


_LIMITED: weakref.WeakSet[Any] = weakref.WeakSet()  # MySQLdb connections whose session limits are set


@contextlib.contextmanager
def bounded(backend: TaskBackend) -> Iterator[None]:
    """A transaction that cannot stall the supervisor: short lock waits, short statements.

    The server ends what outlives these limits with an error; a connection that stops answering
    altogether is cut by the chores' time box (chores.timebox), which ``watch`` lets see this one
    before the transaction's first round trip.
    """
    from django.db import connections

    connection = connections[backend.db_alias]
    utils = importlib.import_module(f"{backend.package}.utils")
    connection.ensure_connection()  # mysqlclient: within the connect_timeout the time box lends
    timebox.watch(connection)
    if connection.vendor == "mysql" and connection.connection not in _LIMITED:
        # Session variables, there being no SET LOCAL, set once per connection: it is the
        # supervisor's own, and every other statement it runs (dead_nodes, forget_node) is bounded
        # the same way.
        with connection.cursor() as cursor:
            cursor.execute(mysql_limits(connection.mysql_is_mariadb))
        _LIMITED.add(connection.connection)
    with utils.exclusive_transaction(backend.db_alias):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
                cursor.execute(f"SET LOCAL lock_timeout = {STATEMENT_TIMEOUT_MS}")
        yield


def mysql_limits(mariadb: bool) -> str:
    """The statement that bounds a MariaDB or MySQL session like STATEMENT_TIMEOUT_MS on PostgreSQL.

    Row-lock waits (innodb_lock_wait_timeout, 50 s by default) and metadata-lock waits
    (lock_wait_timeout, a day by default: an ALTER TABLE during a deploy) take whole seconds, at
    least 1. A statement's own time: MariaDB's max_statement_time (seconds, every statement);
    MySQL's max_execution_time (milliseconds) covers SELECTs only, and an UPDATE of ours can
    only be slow by waiting for a lock, which the first two bound. MariaDB also ends a session
    whose transaction sits idle (idle_transaction_timeout): one whose client was cut off behind
    a proxy that keeps the server's side open, so its row locks are not held for hours.
    """
    seconds = max(1, math.ceil(STATEMENT_TIMEOUT_MS / 1000))
    limits = [f"innodb_lock_wait_timeout = {seconds}", f"lock_wait_timeout = {seconds}"]
    if mariadb:
        limits += [
            f"max_statement_time = {STATEMENT_TIMEOUT_MS / 1000:g}",
            f"idle_transaction_timeout = {IDLE_TRANSACTION_TIMEOUT_S}",
        ]
    else:
        limits.append(f"max_execution_time = {STATEMENT_TIMEOUT_MS}")
    return "SET SESSION " + ", ".join(limits)


def set_sqlite_busy_timeout(backend: TaskBackend) -> None:
    from django.db import connections

    connection = connections[backend.db_alias]
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {STATEMENT_TIMEOUT_MS}")


def finish(backend: TaskBackend, lost: LostTask, policy_for: PolicyFor, rng: random.Random) -> list[Outcome]:
    """Finish the RUNNING rows whose last worker is ``lost.worker_id``; returns what was done."""
    set_sqlite_busy_timeout(backend)
    model = backend.model
    outcomes = []
    with bounded(backend):
        rows = last_worker_in(model.objects.select_for_update().filter(status="RUNNING"), [lost.worker_id])
        if lost.task_id is not None:
            rows = rows.filter(id=lost.task_id)
        for row in rows.only("id", "worker_ids", "status", "task_path", "queue_name"):
            # The filter picked the rows; this check, under their lock, is the one that decides.
            if last_worker(row.worker_ids) != lost.worker_id:
                continue
            outcome = _finish_row(backend, row, lost, policy_for(row.task_path), rng)
            outcomes.append(dataclasses.replace(outcome, queue=row.queue_name))
    return outcomes


def _finish_row(
    backend: TaskBackend, row: Any, lost: LostTask, policy: RetryPolicy | None, rng: random.Random
) -> Outcome:
    from django.utils import timezone

    attempts = len(row.worker_ids)
    message = lost.message
    last_attempt = False
    if policy is not None and matches(policy, lost.exception_path):
        if attempts < policy.max_attempts:
            return _retry(backend, row, "RUNNING", policy, attempts, rng)
        last_attempt = True
        message += f" That was its last attempt ({attempts} of max_attempts {policy.max_attempts})."
    elif lost.exception_path == WORKER_LOST and lost.on_worker_lost == "requeue":
        if attempts < lost.max_attempts:
            backend.model.objects.filter(id=row.id, status="RUNNING").update(status="READY", finished_at=None)
            return Outcome(str(row.id), "READY", attempts, row.task_path)
        message += f" It was not requeued again: {attempts} of max_attempts {lost.max_attempts} attempts used."
    name = lost.exception_path
    backend.model.objects.filter(id=row.id, status="RUNNING").update(
        status="FAILED",
        finished_at=timezone.now(),
        return_value=None,
        exception_class_path=name,
        traceback=f"{name}: {message}\n",
    )
    return Outcome(str(row.id), "FAILED", attempts, row.task_path, last_attempt=last_attempt)


def _retry(
    backend: TaskBackend, row: Any, status: str, policy: RetryPolicy, attempts: int, rng: random.Random
) -> Outcome:
    """Back to READY on the same row, after the backoff; the last error stays until then."""
    from django.utils import timezone

    run_after = timezone.now() + timedelta(seconds=retry_delay(policy, attempts, rng))
    backend.model.objects.filter(id=row.id, status=status).update(status="READY", run_after=run_after, finished_at=None)
    return Outcome(str(row.id), "READY", attempts, row.task_path, run_after=run_after)


def retry_failed(backend: TaskBackend, failed: FailedTask, policy: RetryPolicy, rng: random.Random) -> Outcome | None:
    """Retry a row its worker recorded FAILED, if the policy matches and attempts remain."""
    if not matches(policy, failed.exception_path):
        return None
    set_sqlite_busy_timeout(backend)
    with bounded(backend):
        row = (
            backend.model.objects.select_for_update()
            .filter(id=failed.task_id, status="FAILED")
            .only("id", "worker_ids", "status", "task_path")
            .first()
        )
        if row is None or not row.worker_ids or row.worker_ids[-1] != failed.worker_id:
            return None  # already retried, or claimed since
        attempts = len(row.worker_ids)
        if attempts >= policy.max_attempts:
            return Outcome(str(row.id), "FAILED", attempts, row.task_path, last_attempt=True)
        return _retry(backend, row, "FAILED", policy, attempts, rng)


def running_worker_ids(backend: TaskBackend, prefix: str, exclude: Collection[str] = ()) -> set[str]:
    """Worker ids starting with ``prefix``, and not in ``exclude``, that RUNNING rows were last claimed by."""
    set_sqlite_busy_timeout(backend)
    with bounded(backend):
        rows = last_worker_starts_with(backend.model.objects.filter(status="RUNNING"), prefix)
        rows = exclude_last_worker_in(rows, exclude)
        return {wid for ids in rows.values_list("worker_ids", flat=True) if (wid := last_worker(ids)) is not None}


# -- rows by their last worker id, in SQL -----------------------------------------------------
#
# worker_ids is a JSON list whose last element is the row's current owner. Django's JSON lookups
# cannot say "the last element" on every setup: a key transform on index -1 is an error on SQLite
# under Django 5.2 ("JSON path error near '[-1]'") and on MySQL/MariaDB under Django 6, and on
# MariaDB under Django 5.2 it silently reads element 0; ``contains`` is not supported on SQLite.
# So the filter is a regular expression on the column's JSON text, anchored at the closing
# bracket: PostgreSQL (jsonb::text), SQLite (the text as stored) and MySQL/MariaDB render a list
# of strings alike, up to whitespace, which the pattern allows. Worker ids of this product are
# letters, digits and "_.:-", which JSON writes as they are.

_TEXT = "worker_ids_text"
_LAST = r'"\s*\]\s*$'  # the closing quote of the last element, then the list's bracket


def _as_text(rows: Any) -> Any:
    from django.db.models import TextField
    from django.db.models.functions import Cast

    return rows.alias(**{_TEXT: Cast("worker_ids", TextField())})


def _literal(text: str) -> str:
    """``text`` as a regular expression that PostgreSQL, MySQL, MariaDB and Python read alike."""
    return "".join("\\" + c if c.isascii() and not c.isalnum() and c not in "_:-" else c for c in text)


def last_worker_in(rows: Any, worker_ids: Collection[str]) -> Any:
    """The rows whose last worker id is one of ``worker_ids``."""
    if not worker_ids:
        return rows.none()
    pattern = "|".join(_literal(w) for w in sorted(worker_ids))
    return _as_text(rows).filter(**{f"{_TEXT}__regex": f'"({pattern}){_LAST}'})


def exclude_last_worker_in(rows: Any, worker_ids: Collection[str]) -> Any:
    """The rows whose last worker id is none of ``worker_ids``."""
    if not worker_ids:
        return rows
    pattern = "|".join(_literal(w) for w in sorted(worker_ids))
    return _as_text(rows).exclude(**{f"{_TEXT}__regex": f'"({pattern}){_LAST}'})


def last_worker_starts_with(rows: Any, prefix: str) -> Any:
    """The rows whose last worker id starts with ``prefix``."""
    return _as_text(rows).filter(**{f"{_TEXT}__regex": f'"{_literal(prefix)}[^"]*{_LAST}'})


def last_worker(worker_ids: Any) -> str | None:
    """The current owner of a row: the last of its worker ids (None for an empty or odd value)."""
    if isinstance(worker_ids, list) and worker_ids:
        return str(worker_ids[-1])
    return None


def ready_by_queue(backend: TaskBackend) -> list[tuple[str, int, Any]]:
    """(queue, READY tasks that may run now, enqueued_at of the oldest) per queue."""
    from django.db.models import Count, Min
    from django.utils import timezone

    set_sqlite_busy_timeout(backend)
    with bounded(backend):
        rows = (
            backend.model.objects.filter(status="READY")
            .exclude(run_after__gt=timezone.now(), run_after__lt=_date_max())
            .values("queue_name")
            .annotate(count=Count("id"), oldest=Min("enqueued_at"))
        )
        return [(r["queue_name"], r["count"], r["oldest"]) for r in rows]


def _date_max() -> datetime:
    from django.conf import settings

    return datetime(9999, 1, 1, tzinfo=UTC if settings.USE_TZ else None)


def heartbeats_installed() -> bool:
    from django.apps import apps

    return apps.is_installed("task_supervisor")


def beat(
    node: str,
    pools: list[str],
    started_at: Any,
    backend: TaskBackend,
    snapshot: dict[str, Any] | None = None,
    queues: list[str] | None = None,
    fresh: float | None = None,
) -> list[tuple[str, list[str]]]:
    """Record that this node is alive (one row per node), stamped with the database's clock, and
    publish ``snapshot`` (chores/publish.py) for the dashboard in the same transaction.

    ``queues`` are those the node serves. With ``fresh`` (seconds), the same transaction reads
    back the nodes whose heartbeat is younger than that: (node, queues) each.
    """
    from django.db.models.functions import Now

    from task_supervisor.models import NodeHeartbeat, NodeSnapshot

    set_sqlite_busy_timeout(backend)
    with bounded(backend):
        NodeHeartbeat.objects.update_or_create(
            node=node,
            defaults={
                "pid": os.getpid(),
                "pools": pools,
                "started_at": started_at,
                "last_seen": Now(),
                "queues": queues or [],
            },
        )
        if snapshot is not None:
            NodeSnapshot.objects.update_or_create(
                node=node, defaults={"snapshot": snapshot, "last_seen": Now(), "stopped_at": None}
            )
        if fresh is None:
            return []
        rows = NodeHeartbeat.objects.exclude(_older_than(fresh)).values_list("node", "queues")
        return [(n, list(q) if isinstance(q, list) else []) for n, q in rows]


def mark_stopped(node: str) -> None:
    """A clean exit: the dashboard shows this node as stopped, with when."""
    from django.db.models.functions import Now

    from task_supervisor.models import NodeSnapshot

    NodeSnapshot.objects.filter(node=node).update(stopped_at=Now())


def _older_than(seconds: float) -> Any:
    """A filter on heartbeats older than ``seconds`` by the database's clock, never a node's own:
    a node whose clock is off neither looks dead nor declares others dead."""
    from django.db.models import Q
    from django.db.models.functions import Now

    return Q(last_seen__lt=Now() - timedelta(seconds=seconds))


def dead_nodes(node_timeout: float, me: str) -> list[str]:
    """Nodes whose heartbeat is older than ``node_timeout`` seconds."""
    from task_supervisor.models import NodeHeartbeat

    rows = NodeHeartbeat.objects.filter(_older_than(node_timeout)).exclude(node=me)
    return list(rows.values_list("node", flat=True))


def forget_node(node: str, only_if_older_than: float | None = None) -> None:
    """Remove a node's heartbeat row (its own at a clean exit, or a dead one's once recovered)."""
    from task_supervisor.models import NodeHeartbeat

    rows = NodeHeartbeat.objects.filter(node=node)
    if only_if_older_than is not None:
        rows = rows.filter(_older_than(only_if_older_than))
    rows.delete()


def parse_worker_id(worker_id: str) -> tuple[str, str] | None:
    """(node, pool) of a ``node:pool:slot:generation`` worker id, or None if it is not ours."""
    parts = worker_id.rsplit(":", 3)
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[0], parts[1]
