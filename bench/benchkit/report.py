"""What was measured, and where: the results, the machine header and the side-by-side table."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchkit.bigtable import TableFigures
from benchkit.measure import Distribution, IdleCpu, Memory, Throughput

MIB = 2**20
LATENCY_TARGETS = {"p50": 5.0, "p99": 15.0}  # milliseconds, supervisor
FORK_RESTART_TARGET = 50.0  # milliseconds, median
EXEC_RESTART_TARGET = 1000.0  # milliseconds, median: "well under a second"
MEMORY_TARGET = 0.6  # supervisor tree / bare workers, USS
IDLE_CPU_TARGET = 1.0  # percent of a core, the supervisor process
THROUGHPUT_TARGETS = {"postgres": 3.0, "sqlite": 1.0}  # supervisor / bare
# supervisor / Celery, PostgreSQL noop at N = 2 (the target; the other rows print the ratio)
CELERY_THROUGHPUT_TARGET = 0.8
CELERY_TARGET_ROW = ("postgres", "noop", 2)
BIGTABLE_SLOWDOWN = 0.10  # at most this much worse with the big table than with the empty one


@dataclass
class Results:
    """Every figure by key (see the ``*_key`` functions); errors say why a figure is missing."""

    latency: dict[str, Distribution] = field(default_factory=dict)
    throughput: dict[str, Throughput] = field(default_factory=dict)
    restart: dict[str, Distribution] = field(default_factory=dict)
    idle_cpu: dict[str, IdleCpu] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)
    bigtable: dict[str, TableFigures] = field(default_factory=dict)  # "empty", "filled"
    errors: dict[str, str] = field(default_factory=dict)


def latency_key(kind: str, processes: int, mode: str) -> str:
    return f"{kind}/{processes}/{mode}"


def throughput_key(engine: str, task: str, kind: str, processes: int) -> str:
    return f"{engine}/{task}/{kind}/{processes}"


def celery_key(task: str, processes: int) -> str:
    """Celery's throughput: the same figure is set against both databases' rows."""
    return f"celery/{task}/{processes}"


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    bare: str
    celery: str
    supervisor: str
    verdict: str  # the supervisor against bare db_worker, and the target
    celery_verdict: str  # the supervisor against Celery, and the target

    def cells(self) -> tuple[str, ...]:
        return (self.figure, self.bare, self.celery, self.supervisor, self.verdict, self.celery_verdict)


HEAD = Row("figure", "bare db_worker", "Celery", "task-supervisor", "vs bare; target", "vs Celery; target")


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """The big table figure: the supervisor on an empty task table, then on a full one."""

    figure: str
    empty: str
    filled: str
    verdict: str

    def cells(self) -> tuple[str, ...]:
        return (self.figure, self.empty, self.filled, self.verdict)


def machine(versions: dict[str, str]) -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "django": metadata.version("django"),
        "django_tasks_db": metadata.version("django-tasks-db"),
        "task_supervisor": metadata.version("task-supervisor"),
        "load_average_start": round(os.getloadavg()[0], 2),
        **versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(info: dict[str, Any], processes: tuple[int, ...]) -> str:
    if info.get("redis"):
        celery = [
            f"Celery {info['celery']}: prefork pool (--concurrency N), broker Redis {info['redis']} "
            f"({info['redis_url']}), no result backend (task_ignore_result); Celery's defaults otherwise"
        ]
    elif info.get("celery_problem"):
        celery = [f"Celery: not measured: {info['celery_problem']}"]
    else:
        celery = []  # no figure of this run has a Celery side
    return "\n".join(
        [
            f"task-supervisor {info['task_supervisor']} benchmark, {info['when']}",
            f"machine: {info['cpu_model']}, {info['cpus']} CPUs, {info['memory_gib']} GiB, {info['system']}; "
            f"load average {info['load_average_start']} at start, {info['load_average_end']} at end",
            f"Python {info['python']}, Django {info['django']}, django-tasks-db {info['django_tasks_db']}",
            f"databases: PostgreSQL {info['postgres']} (local TCP), SQLite {info['sqlite']}; "
            "Django defaults (CONN_MAX_AGE = 0)",
            *celery,
            f"N = {', '.join(map(str, processes))}: bare db_worker processes, supervisor children"
            f"{', Celery pool children' if celery else ''}; db workers poll every 1 s; pool defaults otherwise",
            "ratios are task-supervisor's figure divided by the other's",
        ]
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(base: float | None, value: float | None) -> str:
    if base is None or value is None or base == 0:
        return ""
    ratio = value / base
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def _verdict(base: float | None, value: float | None, target: str = "", met: bool = False, failed: bool = False) -> str:
    """The ratio value / base, and the target with whether the value met it."""
    parts = [_ratio(base, value)]
    if target:
        parts.append(f"target {target}: {'met' if met and value is not None else 'MISSED'}")
    if failed:
        parts.append("not measured: see errors below")
    return "; ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class Versus:
    """The supervisor against Celery on one line: Celery's value and the target, if any."""

    value: float | None = None
    target: str = ""
    met: bool = False
    failed: bool = False

    def verdict(self, supervisor: float | None) -> str:
        if self.value is None:
            return "not measured: see errors below" if self.failed else ""
        return _verdict(self.value, supervisor, self.target, self.met, self.failed)


def _row(
    figure: str,
    bare: float | None,
    supervisor: float | None,
    target: str = "",
    met: bool = False,
    digits: int = 1,
    failed: bool = False,
    celery: Versus | None = None,
) -> Row:
    """One line: the values, the supervisor's ratios to bare and to Celery, and the targets."""
    celery = celery or Versus()
    return Row(
        figure,
        _fmt(bare, digits),
        "" if celery.value is None and not celery.failed else _fmt(celery.value, digits),
        _fmt(supervisor, digits),
        _verdict(bare, supervisor, target, met, failed),
        celery.verdict(supervisor),
    )


def _failed(results: Results, *keys: str) -> bool:
    return any(key in results.errors for key in keys)


def latency_rows(results: Results, processes: tuple[int, ...], mode: str, title: str) -> list[Row]:
    """p50, p99 and max per N; only p50 for the informative after-enqueue figure."""
    stats = ("p50",) if mode == "after_enqueue" else ("p50", "p99", "max")
    rows = []
    for n in processes:
        keys = [latency_key(kind, n, mode) for kind in ("bare", "supervisor")]
        bare, sup = (results.latency.get(key) for key in keys)
        failed = _failed(results, *(f"latency/{key}" for key in keys))
        # Celery has no run_after figure; its after_enqueue figure comes from its "now" run.
        celery = results.latency.get(latency_key("celery", n, mode)) if mode != "run_after" else None
        celery_failed = mode != "run_after" and _failed(results, f"latency/{latency_key('celery', n, 'now')}")
        if bare is None and sup is None and not failed:
            continue
        for stat in stats:
            limit = LATENCY_TARGETS.get(stat) if mode != "after_enqueue" else None
            value = getattr(sup, stat) if sup else None
            samples = f", {sup.samples} samples" if sup and stat == "p50" and mode != "after_enqueue" else ""
            figure = f"{title} N={n}, {stat} (ms{samples})"
            target = f"<= {limit:g} ms" if limit is not None else ""
            met = value is not None and limit is not None and value <= limit
            versus = Versus(getattr(celery, stat) if celery else None, failed=celery_failed)
            rows.append(
                _row(figure, getattr(bare, stat) if bare else None, value, target, met, failed=failed, celery=versus)
            )
    return rows


def throughput_rows(results: Results, engine: str, label: str, task: str, processes: tuple[int, ...]) -> list[Row]:
    goal = THROUGHPUT_TARGETS[engine]
    rows = []
    for n in processes:
        keys = [throughput_key(engine, task, kind, n) for kind in ("bare", "supervisor")]
        bare, sup = (results.throughput.get(key) for key in keys)
        failed = _failed(results, *keys)
        if bare is None and sup is None and not failed:
            continue
        b = bare.per_second if bare else None
        s = sup.per_second if sup else None
        tasks = sup.tasks if sup else bare.tasks if bare else 0
        met = b is not None and s is not None and s >= goal * b
        figure = f"throughput {label} {task} N={n} (tasks/s, {tasks} tasks)"
        versus = _celery_throughput(results, task, n, s, (engine, task, n) == CELERY_TARGET_ROW)
        rows.append(_row(figure, b, s, f">= {goal:g}x", met, failed=failed, celery=versus))
    return rows


def _celery_throughput(results: Results, task: str, n: int, supervisor: float | None, targeted: bool) -> Versus:
    found = results.throughput.get(celery_key(task, n))
    c = found.per_second if found else None
    met = c is not None and supervisor is not None and supervisor >= CELERY_THROUGHPUT_TARGET * c
    target = f">= {CELERY_THROUGHPUT_TARGET:g}x" if targeted else ""
    return Versus(c, target, met, _failed(results, celery_key(task, n)))


def _complete(figures: TableFigures | None) -> TableFigures | None:
    return figures if figures is not None and figures.complete else None


def bigtable_rows(results: Results) -> list[HistoryRow]:
    """Throughput and pickup latency with the big table against the empty one; ratio full / empty."""
    empty, filled = (_complete(results.bigtable.get(key)) for key in ("empty", "filled"))
    failed = _failed(results, "bigtable/empty", "bigtable/filled", "bigtable/emptied")
    if empty is None and filled is None and not failed:
        return []
    slower, faster = 1 + BIGTABLE_SLOWDOWN, 1 - BIGTABLE_SLOWDOWN  # the worst allowed latency, throughput

    def row(figure: str, e: float | None, f: float | None, target: str = "", met: bool = False) -> HistoryRow:
        return HistoryRow(figure, _fmt(e), _fmt(f), _verdict(e, f, target, met, failed))

    known = filled or empty
    assert known is not None or failed
    e = empty.throughput.per_second if empty else None
    f = filled.throughput.per_second if filled else None
    runs = f"{known.throughput.tasks} tasks, best of {len(known.runs)}" if known else "tasks"
    met = e is not None and f is not None and f >= e * faster
    rows = [row(f"noop throughput (tasks/s, {runs})", e, f, f">= {faster:g}x", met)]
    for stat in ("p50", "p99", "max"):
        e, f = (getattr(x.latency, stat) if x else None for x in (empty, filled))
        samples = f", {known.latency.samples} samples" if known and stat == "p50" else ""
        target = f"<= {slower:g}x" if stat != "max" else ""
        met = e is not None and f is not None and f <= e * slower
        rows.append(row(f"pickup latency {stat} (ms{samples})", e, f, target, met))
    return rows


def restart_rows(results: Results) -> list[Row]:
    """The supervisor's restart against the boot of a fresh bare db_worker."""
    bare = results.restart.get("bare")
    rows = []
    for method, goal in (("fork", FORK_RESTART_TARGET), ("exec", EXEC_RESTART_TARGET)):
        sup = results.restart.get(method)
        failed = _failed(results, "restart/bare", f"restart/{method}")
        if sup is None and not failed:
            continue
        samples = f", {sup.samples} samples" if sup else ""
        median = sup.p50 if sup else None
        rows.append(
            _row(
                f"restart start={method}, median (ms{samples})",
                bare.p50 if bare else None,
                median,
                f"<= {goal:g} ms",
                median is not None and median <= goal,
                failed=failed,
            )
        )
        rows.append(_row(f"restart start={method}, max (ms)", bare.max if bare else None, sup.max if sup else None))
    return rows


def resource_rows(results: Results, processes: int) -> list[Row]:
    failed = _failed(results, "idle/bare", "idle/supervisor")
    bare_mem, sup_mem = results.memory.get("bare"), results.memory.get("supervisor")
    rows = []
    for attr, goal in (("uss", MEMORY_TARGET), ("pss", None)):
        b = getattr(bare_mem, attr) / MIB if bare_mem else None
        s = getattr(sup_mem, attr) / MIB if sup_mem else None
        met = b is not None and s is not None and goal is not None and s <= goal * b
        target = f"<= {goal:g}x" if goal is not None else ""
        rows.append(_row(f"memory {attr.upper()}, whole tree N={processes} (MiB)", b, s, target, met, failed=failed))
    bare_cpu, sup_cpu = results.idle_cpu.get("bare"), results.idle_cpu.get("supervisor")
    main = sup_cpu.main if sup_cpu else None
    met = main is not None and main < IDLE_CPU_TARGET
    target = f"< {IDLE_CPU_TARGET:g}%"
    rows.append(_row("idle CPU, supervisor process (% of a core)", None, main, target, met, 2, failed))
    b, s = (bare_cpu.tree if bare_cpu else None), (sup_cpu.tree if sup_cpu else None)
    rows.append(_row(f"idle CPU, whole tree N={processes} (% of a core)", b, s, digits=2, failed=failed))
    return rows


def table(lines: Sequence[Sequence[str]], align: str) -> str:
    """Columns padded to their widest cell; ``align`` has one "<" or ">" per column."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(align))]

    def text(line: Sequence[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([text(lines[0]), rule, *map(text, lines[1:])])


def main_table(rows: list[Row]) -> str:
    return table([r.cells() for r in [HEAD, *rows]], "<>>><<")


def bigtable_table(rows: list[HistoryRow], filler: int, processes: int) -> str:
    """Its own table under the main one: the columns are the table's two states."""
    title = (
        f"the task table empty (before the fill and after emptying it, half each) vs with {filler:,} finished rows: "
        f"PostgreSQL, task-supervisor N={processes}; ratio = full / empty"
    )
    head = HistoryRow("figure", "empty table", f"{filler:,} rows", "ratio; target")
    return title + "\n\n" + table([r.cells() for r in [head, *rows]], "<>><")


def write_json(
    path: Path, info: dict[str, Any], plan: Any, results: Results, rows: list[Row], history: list[HistoryRow]
) -> None:
    data = {
        "machine": info,
        "plan": asdict(plan),
        "results": asdict(results),
        "table": [asdict(r) for r in rows],
        "bigtable": [asdict(r) for r in history],
    }
    path.write_text(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
