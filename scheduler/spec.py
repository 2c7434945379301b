"""settings.PERIODIC_TASKS, read into Schedules, with every problem named.

Each problem carries the id of the Django system check that reports it (``task_supervisor.E001``
...), so ``manage.py check``, ``task-supervisor check`` and ``task-supervisor run`` say the same.
"""

from __future__ import annotations

import datetime as dt
import difflib
import importlib
import json
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from task_supervisor.config import parse_duration
from task_supervisor.scheduler import timing

SETTING = "PERIODIC_TASKS"
DEFAULT_MISSED_WITHIN = 3600.0  # seconds; how old a missed slot may be and still be enqueued

# Check ids: one per kind of mistake, stable, listed in the README.
E_SHAPE = "task_supervisor.E001"  # PERIODIC_TASKS or an entry is not a dict, or a key is unknown
E_TASK = "task_supervisor.E002"  # the task path does not import, or is not a Task
E_CRON = "task_supervisor.E003"  # the cron does not parse, or never fires
E_ZONE = "task_supervisor.E004"  # unknown time zone
E_WHEN = "task_supervisor.E005"  # cron and every both given, or neither
E_EVERY = "task_supervisor.E006"  # every is not a positive duration
E_VALUE = "task_supervisor.E007"  # another option has a bad value
E_BACKEND = "task_supervisor.E008"  # the task's backend is not a database backend

KEYS = {
    "task",
    "cron",
    "every",
    "timezone",
    "args",
    "kwargs",
    "queue_name",
    "priority",
    "backend",
    "enabled",
    "missed",
    "missed_within",
    "overlap",
}


@dataclass(frozen=True)
class Problem:
    id: str
    message: str

    def __str__(self) -> str:
        return f"{self.id}: {self.message}"


@dataclass(frozen=True, eq=False)
class Schedule:
    name: str
    task_path: str
    cron: timing.Cron | None
    every: float | None
    zone: ZoneInfo
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue_name: str | None = None
    priority: int | None = None
    backend: str | None = None
    enabled: bool = True
    missed: str = "latest"
    missed_within: float = DEFAULT_MISSED_WITHIN
    overlap: str = "allow"

    @property
    def when(self) -> str:
        return self.cron.expression if self.cron else f"every {self.every:g}s"

    def slots(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        return timing.slots(self.cron, self.every, self.zone, start, end)

    def next_slots(self, after: dt.datetime, count: int = 1) -> list[dt.datetime]:
        return timing.next_slots(self.cron, self.every, self.zone, after, count)

    def task(self) -> Any:
        """The Task object, with the schedule's options applied through ``Task.using``."""
        task = import_task(self.task_path)
        options = {"queue_name": self.queue_name, "priority": self.priority, "backend": self.backend}
        options = {k: v for k, v in options.items() if v is not None}
        return task.using(**options) if options else task

    def describe(self) -> str:
        """The schedule in words: cron-descriptor's reading of the cron, or the interval."""
        if self.cron is None:
            return f"Every {_seconds_in_words(self.every or 0)}, aligned to the Unix epoch"
        from cron_descriptor import Options, get_description

        options = Options()
        options.use_24hour_time_format = True
        expression = self.cron.expression
        fields = expression.split()
        if len(fields) == 6:  # croniter puts seconds last; cron-descriptor first
            expression = " ".join([fields[5], *fields[:5]])
        try:
            return get_description(expression, options)
        except Exception:  # an alias such as @daily that cron-descriptor does not read
            return expression


def _seconds_in_words(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def import_task(path: str) -> Any:
    """The Task at a dotted path; ImportError or TypeError saying what is wrong."""
    module_path, _, name = path.rpartition(".")
    if not module_path:
        raise ImportError(f"{path!r} is not a dotted path such as 'myapp.tasks.send_report'")
    module = importlib.import_module(module_path)
    try:
        task = getattr(module, name)
    except AttributeError:
        raise ImportError(f"module {module_path!r} has no attribute {name!r}") from None
    if not (hasattr(task, "enqueue") and hasattr(task, "using")):
        raise TypeError(f"{path} is a {type(task).__name__}, not a Task; decorate the function with @task")
    return task


def load(settings: Any, *, resolve_tasks: bool = True) -> tuple[list[Schedule], list[Problem]]:
    """Every schedule in ``settings.PERIODIC_TASKS`` and every problem found in it."""
    table = getattr(settings, SETTING, {})
    if table is None:
        return [], []
    if not isinstance(table, dict):
        return [], [Problem(E_SHAPE, f"{SETTING} must be a dict of name -> schedule, not {type(table).__name__}.")]
    default_zone = getattr(settings, "TIME_ZONE", None) or "UTC"
    schedules, problems = [], []
    for name, entry in table.items():
        found: list[Problem] = []
        schedule = _read(str(name), entry, default_zone, found, resolve_tasks)
        problems += found
        if schedule is not None and not found:
            schedules.append(schedule)
    return schedules, problems


def _read(name: str, entry: Any, default_zone: str, problems: list[Problem], resolve_tasks: bool) -> Schedule | None:
    where = f"{SETTING}[{name!r}]"

    def problem(check_id: str, message: str) -> None:
        problems.append(Problem(check_id, f"{where}: {message}"))

    if not isinstance(entry, dict):
        problem(E_SHAPE, f"must be a dict with 'task' and 'cron' or 'every', not {type(entry).__name__}.")
        return None
    for key in sorted(set(entry) - KEYS, key=str):
        close = difflib.get_close_matches(str(key), sorted(KEYS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(KEYS))}."
        problem(E_SHAPE, f"unknown key {key!r}{hint}")
    task_path = entry.get("task")
    if not isinstance(task_path, str) or not task_path:
        problem(E_SHAPE, "'task' must be the dotted path of a Task, such as 'myapp.tasks.send_report'.")
    elif resolve_tasks:
        _check_task(task_path, entry, problem)
    zone = _zone(entry.get("timezone", default_zone), problem)
    cron, every = _when(entry, problem)
    options = _options(entry, problem)
    if problems or zone is None or (cron is None and every is None) or not isinstance(task_path, str):
        return None
    if cron is not None and not timing.next_slots(cron, None, zone, dt.datetime.now(dt.UTC)):
        problem(E_CRON, f"cron {cron.expression!r} never fires (no date matches it).")
        return None
    return Schedule(name=name, task_path=task_path, cron=cron, every=every, zone=zone, **options)


def _check_task(path: str, entry: dict[str, Any], problem: Any) -> None:
    try:
        task = import_task(path)
    except (ImportError, TypeError) as exc:
        problem(E_TASK, f"task {path!r} does not import: {exc}. Fix the path or the module.")
        return
    except Exception as exc:
        problem(E_TASK, f"importing task {path!r} raised {type(exc).__name__}: {exc}.")
        return
    options = {k: entry[k] for k in ("queue_name", "priority", "backend") if entry.get(k) is not None}
    try:
        task = task.using(**options) if options else task
    except Exception as exc:
        problem(E_VALUE, f"Task.using({', '.join(f'{k}={v!r}' for k, v in options.items())}) refused: {exc}.")
        return
    from task_supervisor import compat

    try:
        compat.resolve(task.backend)
    except compat.BackendError as exc:
        problem(
            E_BACKEND,
            f"backend {task.backend!r} of task {path!r} is not a database backend ({exc}); a slot is "
            "enqueued once only when its task row and the run log row commit together.",
        )


def _zone(name: Any, problem: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name:
        problem(E_ZONE, f"'timezone' must be an IANA zone name such as 'Europe/Berlin', not {name!r}.")
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        problem(E_ZONE, f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'.")
        return None


def _when(entry: dict[str, Any], problem: Any) -> tuple[timing.Cron | None, float | None]:
    has_cron, has_every = "cron" in entry, "every" in entry
    if has_cron == has_every:
        which = "both 'cron' and 'every'" if has_cron else "neither 'cron' nor 'every'"
        problem(E_WHEN, f"has {which}; give exactly one (cron: '0 3 * * *', every: '30s').")
        return None, None
    if has_cron:
        try:
            return timing.Cron(entry["cron"]), None
        except (ValueError, TypeError):
            problem(
                E_CRON,
                f"cron {entry['cron']!r} does not parse; use five fields ('0 3 * * *'), an alias such as "
                "'@daily', or six with seconds last ('*/10 * * * * 30').",
            )
            return None, None
    try:
        every = parse_duration(entry["every"])
    except ValueError as exc:
        problem(E_EVERY, f"every {entry['every']!r}: {exc}.")
        return None, None
    if every < 0.001:
        problem(E_EVERY, f"every {entry['every']!r} must be at least 1ms.")
        return None, None
    return None, every


def _options(entry: dict[str, Any], problem: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    args, kwargs = entry.get("args", []), entry.get("kwargs", {})
    if not isinstance(args, list | tuple):
        problem(E_VALUE, f"'args' must be a list, not {type(args).__name__}.")
    elif not _is_json(list(args)):
        problem(E_VALUE, "'args' must be JSON-serialisable (task arguments are stored as JSON).")
    else:
        options["args"] = tuple(args)
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        problem(E_VALUE, "'kwargs' must be a dict with string keys.")
    elif not _is_json(kwargs):
        problem(E_VALUE, "'kwargs' must be JSON-serialisable (task arguments are stored as JSON).")
    else:
        options["kwargs"] = dict(kwargs)
    for key, kind in (("queue_name", str), ("backend", str), ("priority", int), ("enabled", bool)):
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problem(E_VALUE, f"'{key}' must be {'a' if kind is not int else 'an'} {kind.__name__}, not {value!r}.")
        else:
            options[key] = value
    for key, allowed in (("missed", timing.MISSED_POLICIES), ("overlap", timing.OVERLAP_POLICIES)):
        value = entry.get(key)
        if value is None:
            continue
        if value not in allowed:
            problem(E_VALUE, f"'{key}' must be one of {', '.join(map(repr, allowed))}, not {value!r}.")
        else:
            options[key] = value
    if "missed_within" in entry:
        try:
            options["missed_within"] = parse_duration(entry["missed_within"])
        except ValueError as exc:
            problem(E_VALUE, f"'missed_within' {entry['missed_within']!r}: {exc}.")
    return options


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
