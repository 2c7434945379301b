"""A child's per-task statements on PostgreSQL without the ORM's per-call cost.

db_worker spends three statements of its own on every task: the pick (``get_locked``: a SELECT
... FOR UPDATE SKIP LOCKED LIMIT 1), the claim (``save(update_fields=...)``) and the verdict
(the fence's conditional UPDATE). Building and compiling each through the ORM cost more CPU than
the round trips themselves (about 1.2 ms for the pick alone, bench/profile.py). Here each is
compiled once and run again with fresh values:

- ``Pick``: db_worker's own queryset is compiled once per shape (the paused queues are part of
  the shape) and run again with a fresh "now" for ``run_after``, the one value that changes
  between polls. The row is built as the ORM builds it (the compiler's converters, then
  ``from_db``).
- ``Updates``: ``UPDATE table SET a = %s, ... WHERE id = %s [AND status = %s AND started_at =
  %s AND worker_ids = %s]`` written from the model's fields, values prepared by each field's
  ``get_db_prep_save`` as the ORM's update compiler does; Django's pre_save and post_save
  signals are sent around it, as ``save()`` would.

Only on PostgreSQL, and only for querysets whose compiled form holds exactly one "now": anything
else keeps the ORM's way (``Pick._compile`` returns None). The statements still go through
Django's cursor, so execute wrappers, debug logging and error wrapping see them.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction
from django.db.models import signals
from django.utils import timezone

RUNNING = "RUNNING"


def supported(alias: str) -> bool:
    return connections[alias].vendor == "postgresql"


@dataclass(slots=True)
class _Compiled:
    sql: str
    params: list[Any]
    now_at: int  # index of the "now" parameter in params
    compiler: Any
    converters: dict[int, Any]
    attnames: list[str]


class Pick:
    """``queryset.select_for_update(skip_locked=True).first()``, compiled once per shape.

    With ``claim_as`` (a worker id) the pick also claims: one autocommitted statement, ``UPDATE
    table SET status = 'RUNNING', started_at = %s, worker_ids = worker_ids || %s WHERE id =
    (the pick) RETURNING ...``, where db_worker spent four round trips (BEGIN, the pick, its
    claim's save, COMMIT). The row comes back marked, so that db_worker's own ``claim()`` of it
    writes nothing again (``_saving_through``), and db_worker's claim transaction is then empty
    (``worker/run.py`` gives it no BEGIN or COMMIT). A row whose ``worker_ids`` is not a list is
    claimed with it unchanged; rowguard then fails it with the reason, as before.
    """

    def __init__(self, date_max: datetime.datetime, claim_as: str | None = None) -> None:
        self.date_max = date_max  # run_after of a task with none: a parameter that never changes
        self.claim_as = claim_as
        self.compiled: dict[Any, _Compiled | None] = {}

    def first(self, queryset: Any) -> Any:
        """The first row, locked (claimed, with ``claim_as``), as the ORM would return it."""
        shape = (queryset.db, queryset.model, _shape(queryset.query.where))
        entry = self.compiled.get(shape, ...)
        if entry is ...:
            with transaction.atomic(using=queryset.db):  # compiling FOR UPDATE wants one; runs nothing
                entry = self.compiled[shape] = self._compile(queryset)
        if entry is None:
            return self._orm_first(queryset)
        now = timezone.now()
        params = list(entry.params)
        params[entry.now_at] = now
        connection = connections[queryset.db]
        if self.claim_as is not None:
            worker_ids = queryset.model._meta.get_field("worker_ids")
            params[:0] = [RUNNING, now, worker_ids.get_db_prep_save([self.claim_as], connection)]
        with connection.cursor() as cursor:
            cursor.execute(entry.sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        if entry.converters:
            row = next(iter(entry.compiler.apply_converters([row], entry.converters)))
        found = queryset.model.from_db(queryset.db, entry.attnames, row[: len(entry.attnames)])
        if self.claim_as is not None:
            found.task_supervisor_claimed = True
        return found

    def _orm_first(self, queryset: Any) -> Any:
        """The ORM's way, for a shape this does not compile; claiming in the same transaction."""
        if self.claim_as is None:
            return queryset.select_for_update(skip_locked=True).first()
        with transaction.atomic(using=queryset.db):
            found = queryset.select_for_update(skip_locked=True).first()
            if found is not None and isinstance(found.worker_ids, list):  # else rowguard fails it
                found.claim(self.claim_as)
                found.task_supervisor_claimed = True
        return found

    def _compile(self, queryset: Any) -> _Compiled | None:
        query = queryset.select_for_update(skip_locked=True)
        if not query.ordered:
            return None  # first() would order by pk: not the shape this was written for
        compiler = query[:1].query.get_compiler(queryset.db)
        sql, params = compiler.as_sql()
        moving = [i for i, p in enumerate(params) if isinstance(p, datetime.datetime) and p != self.date_max]
        if len(moving) != 1 or compiler.klass_info is None or compiler.annotation_col_map:
            return None
        columns = compiler.select[: compiler.col_count]
        attnames = [column.target.attname for column, _sql, _alias in columns]
        converters = compiler.get_converters([column for column, _sql, _alias in columns])
        if self.claim_as is not None:
            inner, inner_params = query.values("pk")[:1].query.get_compiler(queryset.db).as_sql()
            if list(inner_params) != list(params):
                return None
            sql = _claiming(queryset, inner, [column_sql for _column, (column_sql, _p), _alias in columns])
        return _Compiled(sql, list(params), moving[0], compiler, converters, attnames)


def _claiming(queryset: Any, pick: str, returning: list[str]) -> str:
    quote = connections[queryset.db].ops.quote_name
    meta = queryset.model._meta
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    status, started_at = quote(meta.get_field("status").column), quote(meta.get_field("started_at").column)
    worker_ids = quote(meta.get_field("worker_ids").column)
    return (
        f"UPDATE {table} SET {status} = %s, {started_at} = %s, {worker_ids} = CASE WHEN "
        f"jsonb_typeof({worker_ids}) = 'array' THEN {worker_ids} || %s ELSE {worker_ids} END "
        f"WHERE {pk} = ({pick}) RETURNING {', '.join(returning)}"
    )


def _shape(node: Any) -> Any:
    """What a WHERE tree tests, its "now" left out: the key a compiled pick is kept under."""
    children = getattr(node, "children", None)
    if children is not None:
        return (node.connector, node.negated, tuple(_shape(child) for child in children))
    rhs = getattr(node, "rhs", None)
    if isinstance(rhs, datetime.datetime):
        rhs = "datetime"  # the same query whatever the time; the pick puts in its own
    elif isinstance(rhs, list | set | tuple):
        rhs = tuple(rhs)
    target = getattr(getattr(node, "lhs", None), "target", None)
    return (type(node).__name__, getattr(target, "column", None), repr(rhs))


class Updates:
    """``row.save(update_fields=...)`` as one UPDATE, optionally only while the row is held."""

    HELD_BY = ("status", "started_at", "worker_ids")  # what a claim writes: the fence's condition

    def __init__(self, model: Any) -> None:
        self.model = model
        self.statements: dict[tuple[str, tuple[str, ...], bool], str] = {}

    def save(self, row: Any, update_fields: Sequence[str], using: str, held: bool = False) -> bool:
        """Write ``update_fields`` of ``row``; with ``held``, only if the row is still RUNNING
        with the started_at and worker_ids of ``row``'s claim. True if a row was written."""
        connection = connections[using]
        names = frozenset(update_fields)
        signals.pre_save.send(sender=self.model, instance=row, raw=False, using=using, update_fields=names)
        fields = [self.model._meta.get_field(name) for name in update_fields]
        params = [field.get_db_prep_save(field.pre_save(row, False), connection) for field in fields]
        params.append(self.model._meta.pk.get_db_prep_value(row.pk, connection))
        if held:
            claimed = {"status": RUNNING, "started_at": row.started_at, "worker_ids": row.worker_ids}
            for name in self.HELD_BY:
                params.append(self.model._meta.get_field(name).get_db_prep_save(claimed[name], connection))
        sql = self._statement(using, tuple(update_fields), held)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            written = cursor.rowcount == 1
        if written:
            signals.post_save.send(
                sender=self.model, instance=row, created=False, update_fields=names, raw=False, using=using
            )
        return written

    def _statement(self, using: str, update_fields: tuple[str, ...], held: bool) -> str:
        key = (using, update_fields, held)
        if key not in self.statements:
            quote = connections[using].ops.quote_name
            meta = self.model._meta
            assignments = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in update_fields)
            where = f"{quote(meta.pk.column)} = %s"
            if held:
                where += "".join(f" AND {quote(meta.get_field(name).column)} = %s" for name in self.HELD_BY)
            self.statements[key] = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {where}"
        return self.statements[key]


@dataclass(frozen=True, slots=True)
class FastPath:
    pick: Pick
    updates: Updates


def install(backend: Any, claim_as: str | None = None) -> FastPath | None:
    """On PostgreSQL: the pick (claiming as ``claim_as`` if given) and the updates, and the
    backend's ``claim`` writing through them. None elsewhere (the ORM's way stays)."""
    import importlib

    if not supported(backend.db_alias):
        return None
    models = importlib.import_module(f"{backend.package}.models")
    fast = FastPath(Pick(models.get_date_max(), claim_as), Updates(backend.model))
    claim = getattr(backend.model.claim, "task_supervisor_slow", backend.model.claim)
    backend.model.claim = _saving_through(claim, fast.updates)
    return fast


@contextlib.contextmanager
def no_transaction(using: str | None = None) -> Iterator[None]:
    """db_worker's claim block, when the pick has claimed in one autocommitted statement."""
    yield


def uninstall(model: Any) -> None:
    if hasattr(model.claim, "task_supervisor_slow"):
        model.claim = model.claim.task_supervisor_slow


def _saving_through(method: Any, updates: Updates) -> Any:
    """``method`` with its row's ``save(update_fields=...)`` written by ``updates``."""
    from functools import wraps

    from django.db import DatabaseError, router

    @wraps(method)
    def fast(row: Any, *args: Any, **kwargs: Any) -> Any:
        if vars(row).pop("task_supervisor_claimed", False):
            return None  # claimed by the pick itself (Pick.claim_as)
        def save(*save_args: Any, update_fields: Sequence[str] | None = None, **save_kwargs: Any) -> None:
            if save_args or save_kwargs or not update_fields:
                return type(row).save(row, *save_args, update_fields=update_fields, **save_kwargs)
            using = router.db_for_write(type(row), instance=row)
            if not updates.save(row, update_fields, using):
                raise DatabaseError("Save with update_fields did not affect any rows.")
            return None

        row.save = save
        try:
            return method(row, *args, **kwargs)
        finally:
            # popped, not deleted: flow control's claim wrapper (worker/flow.py), inside this one,
            # sets and deletes its own row.save too.
            vars(row).pop("save", None)

    fast.task_supervisor_slow = method  # type: ignore[attr-defined]
    return fast
