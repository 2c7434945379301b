"""Flow control at claim time: concurrency and rate limits per key, decided in the claim's transaction.

db_worker claims inside one transaction (exclusive on SQLite, so claims are serialized; ``SELECT
... FOR UPDATE SKIP LOCKED`` elsewhere). When ``[limits]`` are declared, the claim guard
(``worker/rowguard.py``) picks through ``Flow.pick``: a row of a limited task path is admitted
only after its key's ``FlowKey`` row is locked (``SELECT ... FOR UPDATE``, in a savepoint) and
found under its limits; the admission is written to that row in the same transaction as the claim.

- Concurrency: ``holders`` lists the task ids claimed under the key; only those still RUNNING
  count (each admission drops the rest), so a slot is free again exactly when its row stops being
  RUNNING (finished, failed, recovered by the janitor or another node), and nothing can leak.
- Rate: ``starts`` keeps the starts of the last window, on the database's clock; a start is
  admitted only when the rate's count-th latest start lies more than one window back.

Two claimers of one key are serialized by the key row's lock; a held-back row is left READY (its
savepoint rolled back, which also drops the key row's lock) and the next READY rows are looked at,
up to SCAN_MAX of them, so one busy key never blocks a queue. Only key-row locks are waited for,
and never while holding another one, so claims cannot deadlock each other. With nothing eligible
the pick returns None and reports what it held back (``held``): the supervisor wakes a child when
a slot frees (a limited task finished) or when a start is due.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from task_supervisor.wire import protocol
from task_supervisor.wire.limits import FlowLimit, KeyArgument, declaration, key_text, rate_verdict

log = logging.getLogger("task_supervisor.worker")

SCAN_BATCH = 50  # READY rows read at a time past a held-back row
SCAN_MAX = 200  # READY rows looked at per claim; with more, the child looks again RESCAN seconds later
RESCAN = 0.05  # seconds
# The channel of migration 0002's trigger: a notice with a queue wakes an idle child on every node.
READY_CHANNEL = "task_supervisor_ready"
RUNNING = "RUNNING"
_UNKEYED = object()  # a path whose key argument cannot be read: claimed without limit


@dataclass(frozen=True, slots=True)
class HeldKey:
    """A key whose READY rows a claim passed over, and why."""

    path: str
    key: str
    queue: str
    reason: str  # "concurrency" or "rate"
    due: float | None  # epoch seconds of the next start a rate allows; None: when a slot frees
    running: int
    value: Any = None  # the key argument's value, as stored


class _Busy(Exception):
    pass


class _Full(Exception):
    def __init__(self, held: HeldKey) -> None:
        self.held = held


class Flow:
    """One child's limits, applied to each of its claims."""

    def __init__(self, model: Any, limits: Iterable[FlowLimit], on_held: Callable[[list[HeldKey], bool], None]) -> None:
        self.model = model
        self.limits = {limit.path: limit for limit in limits}
        self.on_held = on_held
        self.arguments: dict[str, Any] = {}  # path -> KeyArgument, or _UNKEYED
        self.contended = False  # this pick passed a row whose key row another claim had locked

    def pick(self, queryset: Any, original: Callable[[Any], Any]) -> Any:
        """The next row this worker may claim, locked, with its limits' admission written; or None."""
        row = original(queryset)
        if row is None or row.task_path not in self.limits:
            return row  # the usual claim, one query: nothing limited is in the way
        held: dict[tuple[str, str], HeldKey] = {}
        self.contended = False
        if self.admit(row, queryset.db, held):
            return row
        found, more = self.scan(queryset, original, held)
        if found is None:
            self.on_held(list(held.values()), more or self.contended)
        return found

    def scan(self, queryset: Any, original: Callable[[Any], Any], held: dict) -> tuple[Any, bool]:
        """Past a held-back row: the first eligible among the next READY rows; whether any were left unread.

        Each read leaves out the rows already passed and, in SQL, those of the keys held back so far
        (``without``), so a queue whose READY rows are all held back is known to be so in a query or two.
        """
        passed: list[Any] = []
        while len(passed) < SCAN_MAX:
            batch = list(
                self.without(queryset, held, passed).values_list("pk", "task_path", "args_kwargs")[:SCAN_BATCH]
            )
            if not batch:
                return None, False
            for pk, path, args_kwargs in batch:
                passed.append(pk)
                limit = self.limits.get(path)
                if limit is not None and (path, self.key_of(limit, args_kwargs)) in held:
                    continue
                row = original(queryset.filter(pk=pk))  # SKIP LOCKED: None if another claimer has it
                if row is None:
                    continue
                known = len(held)
                if limit is None or self.admit(row, queryset.db, held):
                    return row, False
                if len(held) > known:
                    break  # read again without the newly held key's rows
        return None, True

    def without(self, queryset: Any, held: dict, passed: list[Any]) -> Any:
        """``queryset`` less the rows passed and the rows of held keys that SQL can tell."""
        from django.db.models import Q

        excluded = Q(pk__in=passed) if passed else Q()
        for (path, _key), entry in held.items():
            limit = self.limits[path]
            if limit.key is None:
                excluded |= Q(task_path=path)
            elif isinstance(entry.value, str | int) and not isinstance(entry.value, bool):
                argument = self.arguments.get(path)
                if isinstance(argument, KeyArgument):
                    by_name = Q(**{f"args_kwargs__kwargs__{argument.name}": entry.value})
                    by_position = (
                        Q(**{f"args_kwargs__args__{argument.position}": entry.value})
                        if argument.position is not None
                        else Q(pk__in=[])
                    )
                    # A subquery, not the JSON tests themselves: a row lacking the argument makes them
                    # NULL, and NOT NULL would leave that row out too.
                    keyed = self.model._base_manager.filter(status="READY", task_path=path).filter(
                        by_name | by_position
                    )
                    excluded |= Q(pk__in=keyed.values("pk"))
        return queryset.exclude(excluded) if excluded else queryset

    def admit(self, row: Any, alias: str, held: dict) -> bool:
        """Take a slot (and a start) for the locked ``row``, or record its key as held back."""
        from django.db import connections, transaction

        limit = self.limits[row.task_path]
        key = self.key_of(limit, row.args_kwargs)
        if key is None:
            return True  # its arguments cannot be read: db_worker fails it when it calls the task
        vendor = connections[alias].vendor
        try:
            if vendor == "sqlite":
                # The claim's transaction is exclusive: no lock to drop, and a refusal writes nothing.
                started = self.take(limit, key, row, alias)
            else:
                with transaction.atomic(using=alias):  # a savepoint: PostgreSQL drops the key row's lock at a refusal
                    started = self.take(limit, key, row, alias, skip_locked=vendor == "mysql")
        except _Full as full:
            held[(limit.path, key)] = full.held
            return False
        except _Busy:
            self.contended = True  # another claim holds the key's row: look again soon
            return False
        if started is not None:
            row.task_supervisor_started_at = started
        return True

    def take(self, limit: FlowLimit, key: str, row: Any, alias: str, skip_locked: bool = False) -> dt.datetime | None:
        """Admit ``row`` under its key's row lock, or raise _Full (before writing anything) or _Busy.

        ``skip_locked`` (MySQL/MariaDB, whose rollback to a savepoint keeps the row locks taken
        after it): never wait for a key row, so claims holding one cannot wait for each other.
        """
        from task_supervisor.models import FlowKey

        keys = FlowKey.objects.using(alias)
        locked = keys.select_for_update(skip_locked=skip_locked).filter(limit=limit.path, key=key)
        flow_key = locked.first()
        declared = declaration(limit)
        if flow_key is None:
            keys.bulk_create([FlowKey(limit=limit.path, key=key, declared=declared)], ignore_conflicts=True)
            flow_key = locked.first()
            if flow_key is None:
                raise _Busy()
        holders = [str(h) for h in flow_key.holders if h != str(row.pk)] if isinstance(flow_key.holders, list) else []
        if limit.concurrency is not None and len(holders) >= limit.concurrency:
            # Only a full list is pruned to the rows still RUNNING: under it, the key has room anyway.
            holders = self.running(holders, alias)
        if limit.concurrency is not None and len(holders) >= limit.concurrency:
            raise _Full(
                HeldKey(limit.path, key, row.queue_name, "concurrency", None, len(holders), self.value(limit, row))
            )
        starts, now = [], None
        if limit.rate is not None:
            now = database_now(alias, flow_key.starts)
            starts, due = rate_verdict(flow_key.starts, now, limit.rate)
            if due is not None:
                raise _Full(HeldKey(limit.path, key, row.queue_name, "rate", due, len(holders), self.value(limit, row)))
            starts.append(now)
        flow_key.holders = [*holders, str(row.pk)] if limit.concurrency is not None else []
        flow_key.starts, flow_key.declared = starts, declared
        flow_key.save(using=alias, update_fields=["holders", "starts", "declared", "updated_at"])
        return None if now is None else _as_datetime(now)

    def running(self, holders: list[str], alias: str) -> list[str]:
        """The holders whose rows are still RUNNING: the slots taken right now."""
        found = (
            self.model._base_manager.using(alias).filter(pk__in=holders, status=RUNNING).values_list("pk", flat=True)
        )
        return [str(pk) for pk in found]

    def value(self, limit: FlowLimit, row: Any) -> Any:
        argument = self.arguments.get(limit.path)
        return argument.value(row.args_kwargs) if isinstance(argument, KeyArgument) else None

    def key_of(self, limit: FlowLimit, args_kwargs: Any) -> str | None:
        """The key a stored call falls under ("" for a limit without key); None if unreadable."""
        if limit.key is None:
            return ""
        argument = self.arguments.get(limit.path)
        if argument is None:
            argument = self.arguments[limit.path] = _argument(limit)
        if argument is _UNKEYED:
            return None
        return key_text(argument.value(args_kwargs))


def _argument(limit: FlowLimit) -> Any:
    from django.utils.module_loading import import_string

    try:
        task = import_string(limit.path)
        return KeyArgument.of(task.func, str(limit.key), bool(getattr(task, "takes_context", False)))
    except Exception as exc:  # checked at start-up; a task changed since is claimed without its limit
        log.error("Limit of %s not applied: %s", limit.path, exc)
        return _UNKEYED


def database_now(alias: str, starts: Any) -> float:
    """Epoch seconds on the database's clock, read under the key row's lock (SQLite's is this
    machine's), never before the latest start recorded, so a clock stepped back never reorders them."""
    from django.db import connections

    connection = connections[alias]
    queries = {
        "postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
        "mysql": "SELECT UNIX_TIMESTAMP(SYSDATE(6))",
    }
    if connection.vendor in queries:
        with connection.cursor() as cursor:
            cursor.execute(queries[connection.vendor])
            now = float(cursor.fetchone()[0])
    else:
        now = time.time()
    latest = max((s for s in starts if isinstance(s, int | float)), default=now) if isinstance(starts, list) else now
    return max(now, latest)


def _as_datetime(epoch: float) -> dt.datetime:
    from django.conf import settings
    from django.utils import timezone

    moment = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    return moment if settings.USE_TZ else timezone.make_naive(moment)


def install(backend: Any, limits: Iterable[FlowLimit], reporter: protocol.Reporter) -> Flow | None:
    """The child's Flow, or None when nothing is limited (the claim then stays exactly db_worker's).

    Wraps ``claim`` so an admitted rate-limited row's ``started_at`` is the start the rate counted,
    and, on PostgreSQL, announces each finished limited task to every node's supervisor.
    """
    limits = tuple(limits)
    if not limits:
        return None

    def on_held(held: list[HeldKey], more: bool) -> None:
        dues = [h.due for h in held if h.due is not None]
        reporter.send(
            protocol.HELD,
            paths=sorted({h.path for h in held}),
            queues=sorted({h.queue for h in held}),
            due=min(dues) if dues else None,
            waiting=any(h.due is None for h in held),
            keys=len(held),
            more=more,
        )

    flow = Flow(backend.model, limits, on_held)
    _wrap_claim(backend.model)
    _announce_finishes(backend, flow)
    return flow


def _wrap_claim(model: Any) -> None:
    claim = getattr(model, "claim", None)
    if claim is None:
        return
    original = getattr(claim, "task_supervisor_unwrapped", claim)

    def claim_at(row: Any, *args: Any, **kwargs: Any) -> Any:
        started = vars(row).pop("task_supervisor_started_at", None)
        if started is None:
            return original(row, *args, **kwargs)
        save = row.save

        def save_at(*a: Any, **kw: Any) -> None:
            row.started_at = started
            save(*a, **kw)

        row.save = save_at
        try:
            return original(row, *args, **kwargs)
        finally:
            vars(row).pop("save", None)  # popped: an outer wrapper (worker/fastpath.py) pops its own

    claim_at.task_supervisor_unwrapped = original  # type: ignore[attr-defined]
    model.claim = claim_at


def _announce_finishes(backend: Any, flow: Flow) -> None:
    """A finished limited task may free a slot: on PostgreSQL, wake a child of its queue on every node."""
    from django.db import connections

    if connections[backend.db_alias].vendor != "postgresql":
        return  # elsewhere the supervisor of this node wakes one of its children (``held`` reports)

    def finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        task = getattr(task_result, "task", None)
        if getattr(task, "module_path", None) not in flow.limits:
            return
        payload = json.dumps({"q": getattr(task, "queue_name", "default")})
        try:
            with connections[backend.db_alias].cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [READY_CHANNEL, payload])
        except Exception as exc:  # a wake-up lost: the children poll at their interval anyway
            log.warning("Could not announce a finished limited task: %s", exc)

    backend.signals.task_finished.connect(finished, weak=False, dispatch_uid="task_supervisor_flow_finished")
