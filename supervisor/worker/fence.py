"""Fenced writes: a worker records a task's verdict only while the row is still its own.

db_worker finishes a task with one unconditional save (``set_successful`` / ``set_succeeded``,
or ``set_failed``). If the row was taken from the worker meanwhile (recovered by another node,
requeued, failed by an operator), that save would overwrite whatever the row has become: a
retry's result, or a FAILED that silently turns SUCCESSFUL. Inside each child the finishing
methods are wrapped so that their own ``self.save(update_fields=...)`` writes only if the row is
still RUNNING with this worker's id last in ``worker_ids``.

The check and the write are one statement: ``UPDATE ... WHERE id = %s AND status = 'RUNNING'
AND started_at = %s AND worker_ids = %s``, with the ``started_at`` and ``worker_ids`` this
worker's claim wrote (every claim writes its own of both; a requeue, a recovery or an operator
changes the status), this worker's id checked last in the copy it claimed. One autocommitted
round trip in place of four (BEGIN, a locked read, the write, COMMIT): the finishing write was a
quarter of a noop task's time (bench/profile.py). On PostgreSQL the statement is precompiled
(``worker/fastpath.py``); elsewhere the ORM's ``update()`` writes it. Django's pre_save and
post_save signals are sent around it as ``save()`` would. A save of another shape (not
``update_fields``) takes the older way: a locked read and the save, in one transaction
(exclusive on SQLite, ``SELECT ... FOR UPDATE`` elsewhere).

A refused write raises nothing into db_worker, which goes on to its next task. It is logged
(``task_fenced``) and reported to the supervisor, and the worker's copy of the row is put back
as it was before the method ran: db_worker's ``task_finished`` then says RUNNING, the only
status this worker ever wrote, rather than a verdict the database does not hold. The backend's
own retry around each finishing method still retries a save that failed on a database error.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from task_supervisor import events
from task_supervisor.compat import TaskBackend
from task_supervisor.wire import protocol

log = logging.getLogger("task_supervisor.worker")

# django-tasks-db; django-tasks' own database backend (0.8 to 0.11); both.
FINISHING_METHODS = ("set_successful", "set_succeeded", "set_failed")
RUNNING = "RUNNING"


@dataclass(frozen=True, slots=True)
class Holder:
    """Whose a row is, as read under its lock; status None when the row is gone."""

    status: str | None
    owner: str | None  # the last of its worker_ids

    @classmethod
    def read(cls, model: Any, pk: Any, using: str, lock: bool = True) -> Holder:
        rows = model._base_manager.using(using)
        found = (rows.select_for_update() if lock else rows).filter(pk=pk).values_list("status", "worker_ids")
        row = found.first()
        if row is None:
            return cls(None, None)
        status, worker_ids = row
        owner = str(worker_ids[-1]) if isinstance(worker_ids, list) and worker_ids else None
        return cls(str(status), owner)


NO_LEASE = Holder("RUNNING", None)  # the refusal when the worker's own lease has run out


class Fence:
    """One worker's claim on the rows it runs, checked before each verdict it writes."""

    def __init__(
        self,
        backend: TaskBackend,
        worker_id: str,
        reporter: protocol.Reporter,
        log_extra: dict,
        lease_valid: Callable[[], bool] = lambda: True,
        updates: Any = None,
    ) -> None:
        self.lease_valid = lease_valid
        self.updates = updates  # fastpath.Updates on PostgreSQL: the conditional UPDATE precompiled
        self.model = backend.model
        self.worker_id = worker_id
        self.reporter = reporter
        self.log_extra = log_extra
        self.exclusive_transaction = importlib.import_module(f"{backend.package}.utils").exclusive_transaction

    def holds(self, holder: Holder) -> bool:
        return holder.status == RUNNING and holder.owner == self.worker_id

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` with its row's save fenced; a refusal leaves the row and its copy untouched."""

        @wraps(method)
        def fenced(row: Any, *args: Any, **kwargs: Any) -> Any:
            before = _fields(row)
            refused: list[Holder] = []  # set by the last save attempt only
            row.save = self._fenced_save(row, row.save, refused)
            try:
                result = method(row, *args, **kwargs)
            finally:
                del row.save  # the class's save again
            if refused:
                vars(row).update(before)
                self.refused(row, refused[0])
            return result

        fenced.task_supervisor_unfenced = method  # type: ignore[attr-defined]
        return fenced

    def _fenced_save(self, row: Any, save: Callable[..., None], refused: list[Holder]) -> Callable[..., None]:
        from django.db import router

        def fenced_save(*args: Any, **kwargs: Any) -> None:
            refused.clear()  # the backend's retry may call us again after a database error
            if not self.lease_valid():
                # Another node may recover the row by now, or soon: its verdict is theirs to write.
                refused.append(NO_LEASE)
                return
            using = kwargs.get("using") or router.db_for_write(type(row), instance=row)
            update_fields = kwargs.get("update_fields")
            if not args and update_fields and set(kwargs) <= {"update_fields", "using"}:
                if not self.write_if_held(row, list(update_fields), using):
                    refused.append(Holder.read(self.model, row.pk, using, lock=False))
                return
            with self.exclusive_transaction(using):
                holder = Holder.read(self.model, row.pk, using)
                if self.holds(holder):
                    save(*args, **kwargs)
                    return
            refused.append(holder)

        return fenced_save

    def write_if_held(self, row: Any, update_fields: list[str], using: str) -> bool:
        """``row.save(update_fields=...)`` as one conditional UPDATE; True if it was written."""
        from django.db.models import signals

        if not (isinstance(row.worker_ids, list) and row.worker_ids and str(row.worker_ids[-1]) == self.worker_id):
            return False  # this copy was not claimed by this worker
        if self.updates is not None:
            return bool(self.updates.save(row, update_fields, using, held=True))
        model, names = type(row), frozenset(update_fields)
        signals.pre_save.send(sender=model, instance=row, raw=False, using=using, update_fields=names)
        fields = [model._meta.get_field(name) for name in update_fields]
        values = {field.name: field.pre_save(row, False) for field in fields}
        rows = model._base_manager.using(using)
        held = rows.filter(pk=row.pk, status=RUNNING, started_at=row.started_at, worker_ids=row.worker_ids)
        if held.update(**values) != 1:
            return False
        signals.post_save.send(sender=model, instance=row, created=False, update_fields=names, raw=False, using=using)
        return True

    def refused(self, row: Any, holder: Holder) -> None:
        task_id = str(row.pk)
        if holder is NO_LEASE:
            where = "left RUNNING for recovery: this worker's lease ran out"
        elif holder.status is None:
            where = "gone"
        else:
            where = f"{holder.status} under {holder.owner or 'no worker'}"
        log.warning(
            "Task %s finished on worker %s, but its row is %s: nothing was written",
            task_id,
            self.worker_id,
            where,
            extra={
                **self.log_extra,
                "event": events.TASK_FENCED,
                "task_id": task_id,
                "status": holder.status,
                "owner": holder.owner,
            },
        )
        self.reporter.send(protocol.TASK_FENCED, task_id=task_id, owner=holder.owner, status=holder.status)


def _fields(row: Any) -> dict[str, Any]:
    """The row's field values as loaded, to put back after a refused write."""
    names = {field.attname for field in row._meta.concrete_fields}
    return {name: value for name, value in vars(row).items() if name in names}


def install(
    backend: TaskBackend,
    worker_id: str,
    reporter: protocol.Reporter,
    pool: str = "",
    slot: int = 0,
    lease_valid: Callable[[], bool] = lambda: True,
    updates: Any = None,
) -> Fence:
    """Fence the backend's finishing methods for this worker; installing again replaces the fence.
    No verdict is written either while the worker's lease does not hold (``lease_valid``)."""
    extra = {"pool": pool, "slot": slot, "pid": os.getpid()}
    fence = Fence(backend, worker_id, reporter, extra, lease_valid, updates)
    for name in FINISHING_METHODS:
        method = getattr(backend.model, name, None)
        if method is not None:
            setattr(backend.model, name, fence.wrap(getattr(method, "task_supervisor_unfenced", method)))
    return fence


def uninstall(model: Any) -> None:
    """Put the backend's own finishing methods back."""
    for name in FINISHING_METHODS:
        method = getattr(model, name, None)
        if method is not None and hasattr(method, "task_supervisor_unfenced"):
            setattr(model, name, method.task_supervisor_unfenced)
