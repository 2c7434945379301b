"""What was measured, and where: the results, the machine header and the side-by-side table."""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from benchkit.measure import Distribution, IdleCpu, Memory, Throughput

MIB = 2**20
LATENCY_TARGETS = {"p50": 5.0, "p99": 15.0}  # milliseconds, supervisor
FORK_RESTART_TARGET = 50.0  # milliseconds, median
EXEC_RESTART_TARGET = 1000.0  # milliseconds, median: "well under a second"
MEMORY_TARGET = 0.6  # supervisor tree / bare workers, USS
IDLE_CPU_TARGET = 1.0  # percent of a core, the supervisor process
THROUGHPUT_TARGETS = {"postgres": 3.0, "sqlite": 1.0}  # supervisor / bare


@dataclass
class Results:
    """Every figure by key (see the ``*_key`` functions); errors say why a figure is missing."""

    latency: dict[str, Distribution] = field(default_factory=dict)
    throughput: dict[str, Throughput] = field(default_factory=dict)
    restart: dict[str, Distribution] = field(default_factory=dict)
    idle_cpu: dict[str, IdleCpu] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def latency_key(kind: str, processes: int, mode: str) -> str:
    return f"{kind}/{processes}/{mode}"


def throughput_key(engine: str, task: str, kind: str, processes: int) -> str:
    return f"{engine}/{task}/{kind}/{processes}"


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    bare: str
    supervisor: str
    verdict: str


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
    return "\n".join(
        [
            f"task-supervisor {info['task_supervisor']} benchmark, {info['when']}",
            f"machine: {info['cpu_model']}, {info['cpus']} CPUs, {info['memory_gib']} GiB, {info['system']}; "
            f"load average {info['load_average_start']} at start, {info['load_average_end']} at end",
            f"Python {info['python']}, Django {info['django']}, django-tasks-db {info['django_tasks_db']}",
            f"databases: PostgreSQL {info['postgres']} (local TCP), SQLite {info['sqlite']}; "
            "Django defaults (CONN_MAX_AGE = 0)",
            f"N = {', '.join(map(str, processes))}: bare db_worker processes vs supervisor children; "
            "interval 1 s; pool defaults otherwise",
        ]
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(bare: float | None, supervisor: float | None) -> str:
    if bare is None or supervisor is None or bare == 0:
        return ""
    ratio = supervisor / bare
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def _row(
    figure: str,
    bare: float | None,
    supervisor: float | None,
    target: str = "",
    met: bool = False,
    digits: int = 1,
    failed: bool = False,
) -> Row:
    """One line: the two values, their ratio, and the target with whether the supervisor met it."""
    parts = [_ratio(bare, supervisor)]
    if target:
        parts.append(f"target {target}: {'met' if met and supervisor is not None else 'MISSED'}")
    if failed:
        parts.append("not measured: see errors below")
    return Row(figure, _fmt(bare, digits), _fmt(supervisor, digits), "; ".join(p for p in parts if p))


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
        if bare is None and sup is None and not failed:
            continue
        for stat in stats:
            limit = LATENCY_TARGETS.get(stat) if mode != "after_enqueue" else None
            value = getattr(sup, stat) if sup else None
            samples = f", {sup.samples} samples" if sup and stat == "p50" and mode != "after_enqueue" else ""
            figure = f"{title} N={n}, {stat} (ms{samples})"
            target = f"<= {limit:g} ms" if limit is not None else ""
            met = value is not None and limit is not None and value <= limit
            rows.append(_row(figure, getattr(bare, stat) if bare else None, value, target, met, failed=failed))
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
        rows.append(_row(figure, b, s, f">= {goal:g}x", met, failed=failed))
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


def table(rows: list[Row]) -> str:
    head = Row("figure", "bare db_worker", "task-supervisor", "ratio; target")
    widths = [max(len(getattr(r, f)) for r in [head, *rows]) for f in ("figure", "bare", "supervisor", "verdict")]

    def line(r: Row) -> str:
        return f"{r.figure:<{widths[0]}}  {r.bare:>{widths[1]}}  {r.supervisor:>{widths[2]}}  {r.verdict}".rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *map(line, rows)])


def write_json(path: Path, info: dict[str, Any], plan: Any, results: Results, rows: list[Row]) -> None:
    data = {
        "machine": info,
        "plan": asdict(plan),
        "results": asdict(results),
        "table": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
