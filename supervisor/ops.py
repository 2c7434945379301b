"""Operating a running cluster: cancel, pause and resume, queues, retry, schedules run now /
disable / enable, prune, and the audit log. The CLI, the admin and scripts all call these.

Every action is rows in the database that every supervisor sharing it reads (the database is the
only coordinator): a READY task is cancelled here and now; a RUNNING one gets a CancelRequest
that the supervisor of the child running it acts on within CANCEL_POLL (chores/cancels.py);
a pause is a QueuePause row every child reads at claim time (worker/rowguard.py). Each action
writes an Action row (the audit log) and logs ``operator_action``. Bad input raises
OperationError with one sentence, and nothing is changed.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import logging
import socket
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from task_supervisor import events
from task_supervisor.exceptions import TaskCancelled

log = logging.getLogger(__name__)

BATCH = 1000  # rows per statement when acting on many
CANCELLED = "task_supervisor.TaskCancelled"
CANCELLABLE = ("READY", "RUNNING")
FINISHED = ("SUCCESSFUL", "FAILED")
STATUSES = ("READY", "RUNNING", "SUCCESSFUL", "FAILED")


class OperationError(Exception):
    """Bad input for an operator action: one sentence, and nothing was changed."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did (or, with dry_run, would do): the rows, their count, and a sentence."""

    verb: str
    message: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    dry_run: bool = False


def default_actor() -> str:
    """The OS user and host, for actions from the command line or a script."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _backend(alias: str) -> Any:
    from task_supervisor import compat

    try:
        return compat.resolve(alias)
    except compat.BackendError as exc:
        raise OperationError(str(exc)) from None


def _writing(alias: str) -> contextlib.AbstractContextManager[None]:
    """One write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE): a read
    that turns into a write (get_or_create, update_or_create) would otherwise fail at once with
    "database is locked" while a worker writes, instead of waiting out the busy timeout."""
    from task_supervisor.scheduler import runner

    return runner.write_transaction(alias)


def _closest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_queue(queue: str, known_queues: Collection[str] | None) -> None:
    if known_queues is not None and queue not in known_queues:
        raise OperationError(
            f"No pool serves queue {queue!r}.{_closest(queue, known_queues)} "
            f"Known queues: {', '.join(sorted(known_queues)) or 'none'}."
        )


def _record(verb: str, actor: str, detail: dict[str, Any], rows: int, alias: str) -> None:
    from task_supervisor.models import Action

    Action.objects.using(alias).create(actor=actor[:200], verb=verb, detail=detail, rows=rows)
    log.info(
        "%s: %s (%d rows) by %s",
        verb,
        detail,
        rows,
        actor,
        extra={"event": events.OPERATOR_ACTION, "verb": verb, "actor": actor, "rows": rows},
    )


def _chunks(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(r["id"]), "task": r["task_path"], "queue": r["queue_name"], "status": r["status"]}


def select(
    backend: Any,
    ids: Sequence[str] = (),
    *,
    queue: str | None = None,
    task: str | None = None,
    status: Sequence[str] = (),
    known_queues: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows named by ``ids`` or matched by the filters; OperationError for bad input."""
    model = backend.model
    fields = ("id", "task_path", "queue_name", "status", "backend_name", "worker_ids")
    if not ids and queue is None and task is None and not status:
        raise OperationError("Give task ids, or a filter: a queue, a task path or a status.")
    for s in status:
        if s not in STATUSES:
            raise OperationError(f"Unknown status {s!r}; use one of {', '.join(STATUSES)}.")
    if queue is not None:
        check_queue(queue, known_queues)
    if ids:
        wanted = []
        for text in ids:
            try:
                wanted.append(str(uuid.UUID(str(text))))
            except ValueError:
                raise OperationError(f"Unknown task id {text!r}: not a task id.") from None
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(wanted):
            for r in model.objects.using(backend.db_alias).filter(id__in=chunk).values(*fields):
                found[str(uuid.UUID(str(r["id"])))] = r
        for key in wanted:
            if key not in found:
                raise OperationError(f"Unknown task id {key}: no such task.")
            if found[key]["backend_name"] != backend.alias:
                raise OperationError(
                    f"Task {key} belongs to backend {found[key]['backend_name']!r}, not {backend.alias!r}."
                )
        rows = [found[key] for key in dict.fromkeys(wanted)]
        return [r for r in rows if _matches(r, queue, task, status)]
    query = model.objects.using(backend.db_alias).filter(backend_name=backend.alias)
    if queue is not None:
        query = query.filter(queue_name=queue)
    if task is not None:
        query = query.filter(task_path=task)
    if status:
        query = query.filter(status__in=list(status))
    return list(query.order_by().values(*fields))


def _matches(r: dict[str, Any], queue: str | None, task: str | None, status: Sequence[str]) -> bool:
    return (
        (queue is None or r["queue_name"] == queue)
        and (task is None or r["task_path"] == task)
        and (not status or r["status"] in status)
    )


# -- cancel ------------------------------------------------------------------------------------


Rows = list[dict[str, Any]]


def _fail_ready(be: Any, chunk: Rows, message: str) -> tuple[Rows, Rows]:
    """Cancel the rows of ``chunk`` still READY; returns them, and those claimed meanwhile."""
    from django.utils import timezone

    ready_ids = [r["id"] for r in chunk]
    objects = be.model.objects.using(be.db_alias)
    objects.filter(id__in=ready_ids, status="READY").update(
        status="FAILED",
        finished_at=timezone.now(),
        return_value=None,
        exception_class_path=CANCELLED,
        traceback=f"{CANCELLED}: {message}\n",
    )
    now_failed = set(objects.filter(id__in=ready_ids, exception_class_path=CANCELLED).values_list("id", flat=True))
    failed = [{**_row(r), "status": "FAILED"} for r in chunk if r["id"] in now_failed]
    claimed = list(
        objects.filter(id__in=[i for i in ready_ids if i not in now_failed], status="RUNNING").values(
            "id", "task_path", "queue_name", "status", "backend_name", "worker_ids"
        )
    )
    return failed, claimed


def _request_stop(be: Any, row: dict[str, Any], actor: str) -> None:
    """Ask the node running ``row`` to stop it (its janitor polls the requests)."""
    from task_supervisor.models import CancelRequest

    worker = row["worker_ids"][-1] if isinstance(row["worker_ids"], list) and row["worker_ids"] else ""
    with _writing(be.db_alias):
        CancelRequest.objects.using(be.db_alias).update_or_create(
            task_id=str(row["id"]), defaults={"worker_id": worker, "requested_by": actor[:200], "handled_at": None}
        )


def cancel(
    ids: Sequence[str] = (),
    *,
    queue: str | None = None,
    task: str | None = None,
    status: str | Sequence[str] | None = None,
    dry_run: bool = False,
    actor: str | None = None,
    backend: str = "default",
    known_queues: Collection[str] | None = None,
) -> Outcome:
    """READY tasks become FAILED with TaskCancelled; RUNNING ones are stopped by their node."""
    actor = actor or default_actor()
    be = _backend(backend)
    if not ids and queue is None and task is None and status is None:
        raise OperationError("Give task ids, or a filter: a queue, a task path or a status.")
    statuses = _statuses(status, CANCELLABLE, "cancel")
    rows = select(be, ids, queue=queue, task=task, status=statuses if not ids else (), known_queues=known_queues)
    live = [r for r in rows if r["status"] in CANCELLABLE]
    if not rows:
        raise OperationError("No task matches; nothing was cancelled.")
    if not live:
        done = ", ".join(f"{r['id']} ({r['status']})" for r in rows[:10])
        return Outcome("cancel", f"Nothing to cancel: already finished: {done}.", [_row(r) for r in rows], 0, dry_run)
    if dry_run:
        return Outcome("cancel", f"Would cancel {len(live)} tasks.", [_row(r) for r in live], len(live), True)
    message = f"Task cancelled by {actor}."
    cancelled: list[dict[str, Any]] = []
    for chunk in _chunks([r for r in live if r["status"] == "READY"]):
        failed, claimed = _fail_ready(be, chunk, message)
        cancelled += failed
        live += claimed  # claimed between the read and the update: stopped by its node instead
    for r in live:
        if r["status"] == "RUNNING":
            _request_stop(be, r, actor)
            cancelled.append({**_row(r), "status": "RUNNING (stopping)"})
    detail = {"ids": [r["id"] for r in cancelled[:100]], "queue": queue, "task": task, "status": list(statuses)}
    _record("cancel", actor, detail, len(cancelled), be.db_alias)
    return Outcome("cancel", f"Cancelled {len(cancelled)} tasks.", cancelled, len(cancelled))


def _statuses(status: str | Sequence[str] | None, allowed: Sequence[str], verb: str) -> tuple[str, ...]:
    if status is None:
        return tuple(allowed)
    wanted = (status,) if isinstance(status, str) else tuple(status)
    for s in wanted:
        if s not in allowed:
            raise OperationError(f"Cannot {verb} {s} tasks; --status takes {' or '.join(allowed)}.")
    return wanted


# -- pause, resume, queues ---------------------------------------------------------------------


def pause(
    queues: Sequence[str],
    *,
    actor: str | None = None,
    backend: str = "default",
    known_queues: Collection[str] | None = None,
) -> Outcome:
    """No child of any node claims from these queues until they are resumed."""
    from task_supervisor.models import QueuePause

    actor = actor or default_actor()
    be = _backend(backend)
    if not queues:
        raise OperationError("Name at least one queue to pause.")
    for queue in queues:
        check_queue(queue, known_queues)
    rows = []
    with _writing(be.db_alias):
        for queue in queues:
            pause_row, created = QueuePause.objects.using(be.db_alias).get_or_create(
                queue=queue, defaults={"paused_by": actor[:200]}
            )
            rows.append(
                {"queue": queue, "paused_by": pause_row.paused_by, "since": pause_row.since.isoformat(), "new": created}
            )
    fresh = [r["queue"] for r in rows if r["new"]]
    _record("pause", actor, {"queues": list(queues)}, len(fresh), be.db_alias)
    already = [r["queue"] for r in rows if not r["new"]]
    message = f"Paused {', '.join(fresh) or 'nothing new'}." + (
        f" Already paused: {', '.join(already)}." if already else ""
    )
    return Outcome("pause", message, rows, len(fresh))


def resume(
    queues: Sequence[str],
    *,
    actor: str | None = None,
    backend: str = "default",
    known_queues: Collection[str] | None = None,
) -> Outcome:
    """Children claim from these queues again; on PostgreSQL an idle child is woken at once."""
    from task_supervisor.models import QueuePause

    actor = actor or default_actor()
    be = _backend(backend)
    if not queues:
        raise OperationError("Name at least one queue to resume.")
    for queue in queues:
        if known_queues is not None and queue not in known_queues:
            if not QueuePause.objects.using(be.db_alias).filter(queue=queue).exists():
                check_queue(queue, known_queues)
    resumed = []
    for queue in queues:
        deleted, _ = QueuePause.objects.using(be.db_alias).filter(queue=queue).delete()
        if deleted:
            resumed.append(queue)
    _wake(be, resumed)
    _record("resume", actor, {"queues": list(queues)}, len(resumed), be.db_alias)
    idle = [q for q in queues if q not in resumed]
    message = f"Resumed {', '.join(resumed) or 'nothing'}." + (f" Not paused: {', '.join(idle)}." if idle else "")
    return Outcome("resume", message, [{"queue": q, "resumed": q in resumed} for q in queues], len(resumed))


def _wake(be: Any, queues: Sequence[str]) -> None:
    """PostgreSQL: a notice without a task id, so each supervisor wakes an idle child."""
    import json

    from django.db import connections

    connection = connections[be.db_alias]
    if connection.vendor != "postgresql" or not queues:
        return
    with connection.cursor() as cursor:
        for queue in queues:
            payload = json.dumps({"q": queue})  # no task id: every node wakes a child
            cursor.execute("SELECT pg_notify('task_supervisor_ready', %s)", [payload])


def paused_queues(alias: str = "default") -> dict[str, Any]:
    from task_supervisor.models import QueuePause

    return {p.queue: p for p in QueuePause.objects.using(alias).all()}


def queues(*, backend: str = "default", known_queues: Collection[str] | None = None) -> Outcome:
    """Each queue: READY depth, age of the oldest READY task, paused or not, by whom, since when."""
    from django.db.models import Count, Min
    from django.utils import timezone

    be = _backend(backend)
    ready = {
        r["queue_name"]: r
        for r in be.model.objects.using(be.db_alias)
        .ready()
        .filter(backend_name=be.alias)
        .values("queue_name")
        .annotate(depth=Count("id"), oldest=Min("enqueued_at"))
    }
    paused = paused_queues(be.db_alias)
    now = timezone.now()
    rows = []
    for queue in sorted(set(known_queues or ()) | set(ready) | set(paused)):
        r, p = ready.get(queue), paused.get(queue)
        rows.append(
            {
                "queue": queue,
                "ready": r["depth"] if r else 0,
                "oldest_ready_age": round((now - r["oldest"]).total_seconds(), 3) if r and r["oldest"] else None,
                "paused": p is not None,
                "paused_by": p.paused_by if p else None,
                "paused_since": p.since.isoformat() if p else None,
                "served": known_queues is None or queue in known_queues,
            }
        )
    return Outcome("queues", f"{len(rows)} queues.", rows, len(rows))


# -- retry -------------------------------------------------------------------------------------


def retry(
    ids: Sequence[str] = (),
    *,
    queue: str | None = None,
    task: str | None = None,
    as_new: bool = False,
    dry_run: bool = False,
    actor: str | None = None,
    backend: str = "default",
    known_queues: Collection[str] | None = None,
) -> Outcome:
    """FAILED tasks back to READY on their same row (attempts go on counting), or as new tasks."""
    actor = actor or default_actor()
    be = _backend(backend)
    if not ids and queue is None and task is None:
        raise OperationError("Give task ids, or a filter: a queue or a task path.")
    rows = select(be, ids, queue=queue, task=task, status=("FAILED",) if not ids else (), known_queues=known_queues)
    if ids:
        for r in rows:
            if r["status"] != "FAILED":
                raise OperationError(f"Task {r['id']} is {r['status']}; only FAILED tasks are retried.")
    if not rows:
        raise OperationError("No FAILED task matches; nothing was retried.")
    if dry_run:
        verb = "as new tasks" if as_new else "on their rows"
        return Outcome("retry", f"Would retry {len(rows)} tasks {verb}.", [_row(r) for r in rows], len(rows), True)
    done = _retry_as_new(be, rows) if as_new else _retry_in_place(be, rows)
    detail = {"ids": [str(r["id"]) for r in rows[:100]], "as_new": as_new, "queue": queue, "task": task}
    _record("retry", actor, detail, len(done), be.db_alias)
    return Outcome("retry", f"Retried {len(done)} tasks{' as new tasks' if as_new else ''}.", done, len(done))


def _retry_in_place(be: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from django.conf import settings

    never = datetime(9999, 1, 1, tzinfo=UTC if settings.USE_TZ else None)  # the backend's "no run_after"
    done = []
    for chunk in _chunks(rows):
        chunk_ids = [r["id"] for r in chunk]
        be.model.objects.using(be.db_alias).filter(id__in=chunk_ids, status="FAILED").update(
            status="READY", finished_at=None, run_after=never
        )
        done += [{**_row(r), "status": "READY"} for r in chunk]
    return done


def _retry_as_new(be: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from django.utils.module_loading import import_string

    done = []
    for chunk in _chunks(rows):
        for full in be.model.objects.using(be.db_alias).filter(id__in=[r["id"] for r in chunk]):
            try:
                task = import_string(full.task_path)
            except ImportError as exc:
                raise OperationError(f"Task {full.id}: {full.task_path} does not import ({exc}).") from None
            task = task.using(queue_name=full.queue_name, priority=full.priority, backend=full.backend_name)
            args = full.args_kwargs or {}
            result = task.enqueue(*args.get("args", []), **args.get("kwargs", {}))
            done.append({"id": str(result.id), "from": str(full.id), "task": full.task_path, "queue": full.queue_name})
    return done


# -- schedules ---------------------------------------------------------------------------------


def _schedule(name: str) -> Any:
    from django.conf import settings

    from task_supervisor.scheduler import spec

    schedules, _ = spec.load(settings, resolve_tasks=False)
    by_name = {s.name: s for s in schedules}
    if name not in by_name:
        raise OperationError(f"Unknown schedule {name!r}.{_closest(name, by_name)}")
    return by_name[name]


def run_schedule(name: str, *, actor: str | None = None) -> Outcome:
    """Enqueue a schedule's task now; recorded in the run log as manual, taking no slot."""
    from django.utils import timezone

    from task_supervisor.models import ScheduleRun
    from task_supervisor.scheduler import runner

    actor = actor or default_actor()
    schedule = _schedule(name)
    alias = runner.database_of(schedule)
    with runner.write_transaction(alias):
        result = schedule.task().enqueue(*schedule.args, **schedule.kwargs)
        ScheduleRun.objects.using(alias).create(
            schedule=name, slot=timezone.now(), manual=True, node="manual", task_result_id=str(result.id)
        )
    _record("schedule_run", actor, {"schedule": name, "task_id": str(result.id)}, 1, alias)
    return Outcome("schedule_run", f"Schedule {name} enqueued now as task {result.id}.", [{"id": str(result.id)}], 1)


def set_schedule_enabled(name: str, enabled: bool, *, actor: str | None = None) -> Outcome:
    """Disable or enable a schedule at run time; back to what settings say clears the override."""
    from task_supervisor.models import ScheduleOverride
    from task_supervisor.scheduler import runner

    actor = actor or default_actor()
    schedule = _schedule(name)
    alias = runner.database_of(schedule)
    rows = ScheduleOverride.objects.using(alias)
    with _writing(alias):
        if enabled == schedule.enabled:
            rows.filter(schedule=name).delete()
        else:
            rows.update_or_create(schedule=name, defaults={"enabled": enabled, "changed_by": actor[:200]})
    verb = "schedule_enable" if enabled else "schedule_disable"
    _record(verb, actor, {"schedule": name}, 1, alias)
    state = "enabled" if enabled else "disabled"
    return Outcome(verb, f"Schedule {name} {state}.", [{"schedule": name, "enabled": enabled}], 1)


def schedule_overrides(alias: str = "default") -> dict[str, Any]:
    from task_supervisor.models import ScheduleOverride

    return {o.schedule: o for o in ScheduleOverride.objects.using(alias).all()}


# -- retention and the audit log ---------------------------------------------------------------


def prune(retention: Any, *, dry_run: bool = False, actor: str | None = None, backend: str = "default") -> Outcome:
    """Delete what [retention] says may go, in batches; with dry_run, only count it."""
    from task_supervisor.chores import retention as chore

    actor = actor or default_actor()
    be = _backend(backend)
    if not retention.enabled:
        raise OperationError("Nothing to prune: set durations in [retention] of config.toml.")
    counts = chore.count(be, retention)
    if dry_run:
        rows = [{"kind": k, "rows": n} for k, n in counts.items()]
        return Outcome("prune", f"Would delete {sum(counts.values())} rows.", rows, sum(counts.values()), True)
    deleted = dict.fromkeys(chore.KINDS, 0)
    for kind in chore.KINDS:
        while n := chore.prune_batch(be, retention, kind):
            deleted[kind] += n
    total = sum(deleted.values())
    _record("prune", actor, deleted, total, be.db_alias)
    return Outcome("prune", f"Deleted {total} rows.", [{"kind": k, "rows": n} for k, n in deleted.items()], total)


def actions(limit: int = 50, *, backend: str = "default") -> Outcome:
    from task_supervisor.models import Action

    be = _backend(backend)
    rows = [
        {"at": a.at.isoformat(), "actor": a.actor, "verb": a.verb, "rows": a.rows, "detail": a.detail}
        for a in Action.objects.using(be.db_alias).order_by("-at", "-id")[:limit]
    ]
    return Outcome("actions", f"{len(rows)} actions.", rows, len(rows))


__all__ = [
    "OperationError",
    "Outcome",
    "TaskCancelled",
    "actions",
    "cancel",
    "pause",
    "prune",
    "queues",
    "resume",
    "retry",
    "run_schedule",
    "set_schedule_enabled",
]
