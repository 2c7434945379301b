"""Where a child's time goes per task: a sampling profile of one child draining a noop backlog.

    .venv/bin/python bench/profile.py [--tasks N] [--engine postgres|sqlite] [--rate HZ] [--cpu]
                                      [--sample child|supervisor] [--raw FILE] [--bare] [--analyze]

Starts `task-supervisor run` with one child (the benchmark's project and config: Django's
defaults, bench/README.md), enqueues a backlog of ``--tasks`` noop tasks in one transaction,
and samples the child with py-spy (the ``bench`` extra installs it; it needs ptrace, so root or
``kernel.yama.ptrace_scope = 0``) from its first task to its last, waits on the database
included (a child waiting on its query spends that task's time too; ``--cpu`` leaves them
out). Every sample is put in the first category below whose frame it holds, and each category
is printed as milliseconds per task and as a share of the child's time. It also prints the CPU
time per task of the supervisor, the child and PostgreSQL's processes over the drain.

``--rate 0`` skips the profile (throughput and CPU only); ``--bare`` times one bare db_worker
on the same backlog; ``--analyze`` runs ANALYZE on the task table once the backlog is committed
(otherwise the planner still believes the table empty, and each pick sorts the whole backlog).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from benchkit import database, harness
from benchkit.database import BenchError
from benchkit.signals import interrupt_on_term

# (label, any of these substrings in the sample's stack), first match wins: leaves before callers.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (db_worker's and ours)", ("logging/__init__.py", "jsonlog.py")),
    ("report to the supervisor", ("Reporter.send (",)),
    ("process title", ("proctitle.py",)),
    ("finishing transaction (fenced)", ("set_successful", "set_succeeded", "set_failed")),
    ("pick and claim", ("get_locked", "claim (", "rowguard.py", "exclusive_transaction", "Atomic.__")),
    ("connection health check", ("close_old_connections", "is_usable")),
    ("task_started / task_finished signals", ("Signal.send (",)),
    ("the task itself", ("call (django_tasks", "call (django/tasks", "noop (")),
    ("loading the row's task and arguments", ("task (django_tasks_db", "task_result (django_tasks_db")),
    ("db_worker's loop (building its queryset)", ("Worker.run (",)),
)
IDLE = "ControlChannel.sleep ("


def record(child_pid: int, rate: int, out: Path, waits: bool) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise BenchError("py-spy is missing: .venv/bin/pip install py-spy")
    argv = [spy, "record", "--pid", str(child_pid), "--nonblocking", "--rate", str(rate)]
    if waits:
        argv.append("--idle")  # a process waiting on a socket counts
    return subprocess.Popen([*argv, "--format", "raw", "--output", str(out)], stdout=subprocess.DEVNULL)


def categorize(raw: Path) -> collections.Counter[str]:
    """Samples per category; the child's sleeps between empty polls (before the backlog came,
    after it was drained) are left out: a draining child never sleeps."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit() or IDLE in stack:
            continue
        label = next((name for name, marks in CATEGORIES if any(m in stack for m in marks)), "other")
        counts[label] += int(number)
    return counts


def report(counts: collections.Counter[str], tasks: int, seconds: float, engine: str) -> str:
    total = sum(counts.values()) or 1
    lines = [
        f"One child, {tasks} noop tasks on {engine}: {tasks / seconds:.0f} tasks/s, "
        f"{seconds * 1000 / tasks:.3f} ms per task ({total} samples)",
        "",
        f"{'where':<40} {'ms/task':>8} {'share':>6}",
    ]
    per_task = seconds * 1000 / tasks
    for label, count in counts.most_common():
        lines.append(f"{label:<40} {per_task * count / total:8.3f} {100 * count / total:5.1f}%")
    return "\n".join(lines)


class CpuClock:
    """CPU seconds used from now on by named processes, and by PostgreSQL's (every process
    called postgres: the child's backend, the supervisor's, the WAL writer...)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self.start = self.sample()

    def sample(self) -> dict[str, float]:
        taken = {name: _cpu(proc) for name, proc in self.procs.items()}
        taken["postgres"] = sum(_cpu(p) for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres")
        return taken

    def used(self) -> dict[str, float]:
        return {name: value - self.start.get(name, 0.0) for name, value in self.sample().items()}


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def warm_up(db: database.Database) -> None:
    """First-task imports and query compiles, outside the profile."""
    database.enqueue(db)
    database.wait_drained(db, timeout=30)
    database.clear(db)


def bare(db: database.Database, workspace: Path, tasks: int) -> int:
    """The same backlog through one bare db_worker: the yardstick."""
    with harness.BareWorkers(db, 1, workspace, "profile-bare"):
        warm_up(db)
        database.enqueue_backlog(db, "noop", tasks)
        database.wait_drained(db, timeout=60 + tasks * 0.5)
    span = database.window(db)
    print(f"One bare db_worker, {span.finished} noop tasks on {db.engine}: {span.finished / span.seconds:.0f} tasks/s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--engine", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--rate", type=int, default=250, help="samples per second; 0: no profile, throughput only")
    parser.add_argument("--bare", action="store_true", help="time one bare db_worker on the same backlog instead")
    parser.add_argument("--sample", choices=("child", "supervisor"), default="child", help="the process to sample")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE the task table once the backlog is in")
    parser.add_argument("--cpu", action="store_true", help="CPU samples only, waits on the database left out")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks in FILE")
    args = parser.parse_args(argv)
    interrupt_on_term()
    with harness.Workspace() as workspace, database.postgres_database() as postgres:
        sqlite = database.sqlite_database(workspace.path)
        database.setup_django(postgres, sqlite)
        db = postgres if args.engine == "postgres" else sqlite
        database.migrate(db)
        raw = args.raw or workspace.path / "stacks.txt"
        if args.bare:
            return bare(db, workspace.path, args.tasks)
        with harness.Supervised(db, 1, workspace.path, "profile") as workers:
            (child,) = workers.wait_idle(lambda children: True)
            warm_up(db)
            target = child.pid if args.sample == "child" else workers.main_pid()
            spy = record(target, args.rate, raw, not args.cpu) if args.rate and target else None
            time.sleep(1.0)  # py-spy attached
            cpu = CpuClock({"supervisor": workers.main_pid(), "child": child.pid})
            database.enqueue_backlog(db, "noop", args.tasks)
            if args.analyze:
                from django.db import connections
                connections[db.alias].cursor().execute("ANALYZE django_tasks_database_dbtaskresult")
            database.wait_drained(db, timeout=60 + args.tasks * 0.1)
            used = cpu.used()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=30)
        span = database.window(db)
        counts = categorize(raw) if spy is not None else None  # before the workspace goes
    per_task = ", ".join(f"{name} {seconds * 1000 / span.finished:.3f}" for name, seconds in used.items())
    print(f"CPU ms per task: {per_task}")
    if counts is None:
        print(f"One child, {span.finished} noop tasks on {args.engine}: {span.finished / span.seconds:.0f} tasks/s")
        return 0
    # Shares of the samples, scaled to the drain's time as the rows tell it.
    print(report(counts, span.finished, span.seconds, args.engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
