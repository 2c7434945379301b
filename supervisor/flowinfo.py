"""What the limits hold back, read from the database: for status, metrics, the admin, ``check``
and ``why``; plus the tidying of FlowKey and UniqueTask rows nothing counts any more.

Read-only but for ``tidy``. A key's slots are its FlowKey holders still RUNNING, exactly as the
claim counts them (``worker/flow.py``); READY rows are read at most CENSUS_ROWS per limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from task_supervisor.wire.limits import (
    MAX_RATE_WINDOW,
    FlowLimit,
    KeyArgument,
    from_declaration,
    key_text,
    rate_verdict,
)

CENSUS_ROWS = 10_000  # READY rows read per limited path
TIDY_ROWS = 500  # rows deleted per table and tidy
KEYS_SHOWN = 20  # keys per limit in status and metrics, those holding most back first


@dataclass
class KeyCensus:
    key: str
    running: int = 0
    ready: int = 0  # READY rows of the key that may run now (run_after passed)
    held_back: int = 0  # of those, held back by the key's limits right now
    reason: str = ""  # why they are held back: "concurrency 1 of 1 running", "rate 5/1s: next start at ..."
    next_start: float | None = None  # epoch seconds a rate allows the next start

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("key", "running", "ready", "held_back", "reason", "next_start")}


@dataclass
class LimitCensus:
    limit: FlowLimit
    keys: dict[str, KeyCensus] = field(default_factory=dict)
    truncated: bool = False  # more READY rows than CENSUS_ROWS were left uncounted
    error: str = ""  # the task's key argument cannot be read

    def as_dict(self) -> dict[str, Any]:
        shown = sorted(self.keys.values(), key=lambda k: (-k.held_back, -k.running, k.key))[:KEYS_SHOWN]
        return {
            "path": self.limit.path,
            "limit": self.limit.describe(),
            "running": sum(k.running for k in self.keys.values()),
            "held_back": sum(k.held_back for k in self.keys.values()),
            "keys_at_limit": sum(1 for k in self.keys.values() if k.reason),
            "truncated": self.truncated,
            "error": self.error,
            "keys": [k.as_dict() for k in shown],
        }


def key_reader(limit: FlowLimit) -> KeyArgument | None:
    """The limit's key argument (None for a limit without key); raises what the task's import raises."""
    if limit.key is None:
        return None
    from django.utils.module_loading import import_string

    task = import_string(limit.path)
    return KeyArgument.of(task.func, limit.key, bool(getattr(task, "takes_context", False)))


def census(backend: Any, limits: Iterable[FlowLimit], now: float | None = None) -> list[LimitCensus]:
    """Per limit and key: running slots, READY rows, how many are held back and why."""
    from task_supervisor.models import FlowKey

    now = time.time() if now is None else now
    alias = backend.db_alias
    tasks = backend.model._base_manager.using(alias)
    found = []
    for limit in limits:
        result = LimitCensus(limit)
        found.append(result)
        try:
            reader = key_reader(limit)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            continue
        rows = FlowKey.objects.using(alias).filter(limit=limit.path).values_list("key", "holders", "starts")
        holders = {key: h if isinstance(h, list) else [] for key, h, _ in rows}
        starts = {key: s if isinstance(s, list) else [] for key, _, s in rows}
        every = [h for hs in holders.values() for h in hs]
        running = {str(pk) for pk in tasks.filter(pk__in=every, status="RUNNING").values_list("pk", flat=True)}
        ready = (
            backend.model.objects.using(alias)
            .ready()
            .filter(task_path=limit.path)
            .values_list("args_kwargs", flat=True)
        )
        counted = list(ready[: CENSUS_ROWS + 1])
        result.truncated = len(counted) > CENSUS_ROWS
        for args_kwargs in counted[:CENSUS_ROWS]:
            key = "" if reader is None else key_text(reader.value(args_kwargs))
            result.keys.setdefault(key, KeyCensus(key)).ready += 1
        for key in set(holders) | set(result.keys):
            entry = result.keys.setdefault(key, KeyCensus(key))
            entry.running = sum(1 for h in holders.get(key, []) if h in running)
            _judge(limit, entry, starts.get(key, []), now)
    return found


def _judge(limit: FlowLimit, entry: KeyCensus, starts: list, now: float) -> None:
    reasons = []
    if limit.concurrency is not None and entry.running >= limit.concurrency:
        reasons.append(f"concurrency: {entry.running} of {limit.concurrency} running")
    if limit.rate is not None:
        _, due = rate_verdict([s for s in starts if isinstance(s, int | float)], now, limit.rate)
        if due is not None:
            entry.next_start = due
            reasons.append(f"rate {limit.rate}: next start in {max(0.0, due - now):.2f}s")
    entry.reason = "; ".join(reasons)
    entry.held_back = entry.ready if reasons else 0


def explain(backend: Any, limits: dict[str, FlowLimit], task_id: str, now: float | None = None) -> str:
    """One sentence: why the READY task ``task_id`` is not being taken, as far as limits and pauses go."""
    from django.utils import timezone

    row = backend.model._base_manager.using(backend.db_alias).filter(pk=task_id).first()
    if row is None:
        return f"Task {task_id} does not exist."
    if row.status != "READY":
        return f"Task {task_id} is {row.status}, not READY."
    if row.run_after is not None and row.run_after.year < 9999 and row.run_after > timezone.now():
        return f"Task {task_id} waits for its run_after, {row.run_after.isoformat()}."
    if _paused(backend, row.queue_name):
        return f"Task {task_id}: its queue {row.queue_name!r} is paused."
    limit = limits.get(row.task_path)
    if limit is None:
        return (
            f"Task {task_id} is eligible: no limit holds it back; it waits for a free child serving {row.queue_name!r}."
        )
    reader = key_reader(limit)
    key = "" if reader is None else key_text(reader.value(row.args_kwargs))
    entry = next(
        (c.keys[key] for c in census(backend, [limit], now) if key in c.keys),
        KeyCensus(key),
    )
    which = f"{row.task_path} [{limit.key}={key}]" if limit.key is not None else row.task_path
    if entry.reason:
        return f"Task {task_id} is held back by the limit of {which} ({limit.describe()}): {entry.reason}."
    return (
        f"Task {task_id} is eligible under the limit of {which}; it waits for a free child serving {row.queue_name!r}."
    )


def declared_limits(backend: Any) -> dict[str, FlowLimit]:
    """The limits as the children last applied them, read from their key rows (for the admin, which
    has no config.toml): a limit no claim met yet holds nothing back."""
    from task_supervisor.models import FlowKey

    rows = FlowKey.objects.using(backend.db_alias).order_by("limit").values_list("limit", "declared").distinct()
    found: dict[str, FlowLimit] = {}
    for path, text in rows:
        if path not in found and (limit := from_declaration(path, text)) is not None:
            found[path] = limit
    return found


def _paused(backend: Any, queue: str) -> bool:
    from task_supervisor.models import QueuePause

    return QueuePause.objects.using(backend.db_alias).filter(queue=queue).exists()


def tidy(backend: Any, limits: dict[str, FlowLimit], now: float | None = None) -> int:
    """Delete FlowKey rows that hold no RUNNING slot and no start inside their window (a day for a
    limit not declared here) and UniqueTask rows out of their scope; at most TIDY_ROWS of each."""
    from django.db import transaction

    from task_supervisor.models import FlowKey, UniqueTask
    from task_supervisor.unique import in_scope

    now = time.time() if now is None else now
    alias = backend.db_alias
    tasks = backend.model._base_manager.using(alias)
    deleted = 0
    with transaction.atomic(using=alias):
        keys = list(FlowKey.objects.using(alias).select_for_update(skip_locked=True)[:TIDY_ROWS])
        holders = [h for k in keys if isinstance(k.holders, list) for h in k.holders]
        running = {str(pk) for pk in tasks.filter(pk__in=holders, status="RUNNING").values_list("pk", flat=True)}
        idle = [k.pk for k in keys if _idle(k, limits.get(k.limit), running, now)]
        deleted += FlowKey.objects.using(alias).filter(pk__in=idle).delete()[0]
    with transaction.atomic(using=alias):
        uniques = list(
            UniqueTask.objects.using(alias).select_for_update(skip_locked=True).order_by("created_at")[:TIDY_ROWS]
        )
        stale = [u.pk for u in uniques if not in_scope(u, backend)]
        deleted += UniqueTask.objects.using(alias).filter(pk__in=stale).delete()[0]
    return deleted


def _idle(row: Any, limit: FlowLimit | None, running: set[str], now: float) -> bool:
    if any(h in running for h in (row.holders if isinstance(row.holders, list) else [])):
        return False
    if limit is None:
        # Declared on another node, perhaps: gone only once no window (a day at most) can still hold a start.
        return row.updated_at.timestamp() < now - MAX_RATE_WINDOW
    if limit.rate is not None and isinstance(row.starts, list):
        return not any(isinstance(s, int | float) and s >= now - limit.rate.per for s in row.starts)
    return True


def problems(limits: dict[str, FlowLimit], task_class: type | None = None) -> list[str]:
    """[limits] that cannot apply: a path that is no task, a key that is none of its arguments."""
    from django.utils.module_loading import import_string

    found = []
    for path, limit in limits.items():
        where = f'limits."{path}"'
        try:
            task = import_string(path)
        except ImportError as exc:
            found.append(f"{where}: no task {path!r} can be imported ({exc}); name a task by its dotted path.")
            continue
        if task_class is not None and not isinstance(task, task_class):
            found.append(
                f"{where}: {path!r} is a {type(task).__name__}, not a task; name a function decorated with @task."
            )
            continue
        if limit.key is not None:
            try:
                key_reader(limit)
            except ValueError as exc:
                found.append(f'{where}.key {limit.key!r}: {exc}; name one of its arguments, or a position such as "0".')
    return found


def report_lines(backend: Any, limits: dict[str, FlowLimit]) -> list[str]:
    """For ``check``: each limit, and the keys holding READY tasks back right now."""
    lines = []
    for entry in census(backend, limits.values()):
        data = entry.as_dict()
        lines.append(
            f"Limit {data['path']}: {data['limit']}; {data['running']} running, {data['held_back']} held back."
        )
        lines += [
            f"  key {k['key'] or '-'}: {k['held_back']} held back: {k['reason']}."
            for k in data["keys"]
            if k["held_back"]
        ]
    return lines
