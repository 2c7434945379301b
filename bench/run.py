"""task-supervisor against N bare `manage.py db_worker` processes and Celery, side by side.

    .venv/bin/python bench/run.py [--quick] [--json FILE] [--only FIGURE ...] [--keep]

Creates its own PostgreSQL database (ts_bench_<random>), SQLite file and Redis queue, starts and
stops every process it needs, and leaves nothing behind, also on Ctrl-C. What each figure means
and how it is taken: bench/README.md. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from benchkit import bigtable, celeryside, database, harness, measure, report
from benchkit.database import BenchError, Database
from benchkit.report import Results, celery_key, latency_key, throughput_key
from benchkit.signals import interrupt_on_term, uninterrupted

FIGURES = ("latency", "throughput", "restart", "memory", "cpu", "bigtable", "limits", "dashboard")
LIMITS_TASKS = 2000  # backlog per run of the [limits] figure (bench/flow.py); --quick: 500
DASHBOARD_ROWS = 1_000_000  # finished rows under the admin dashboard (bench/dashboard.py); --quick: 100000
KINDS = ("bare", "supervisor")  # the database workers; Celery runs after them for each N
BIGTABLE_PROCESSES = 2  # supervisor children for the big table figure
SUPERVISOR_GAP = (0.05, 0.30)  # seconds between one task's start and the next enqueue
# A bare worker's latency depends on where in its 1 s polling cycle a task lands: gaps spanning a
# whole cycle make that phase uniform, as with real arrivals (50-300 ms would bias it high).
BARE_GAP = (0.05, 1.05)
RUN_AFTER = 0.5  # seconds in the future for run_after samples
IDLE_SETTLE = 2.0  # seconds of quiet before idle CPU and memory are taken


@dataclass(frozen=True, slots=True)
class Plan:
    processes: tuple[int, ...] = (1, 2, 4)
    latency_samples: int = 100  # per supervisor sample set
    bare_latency_samples: int = 25  # per bare sample set: each costs about a second of polling interval
    run_after_samples: int = 20
    bare_run_after_samples: int = 10
    noop_per_process: int = 250  # backlog of noop tasks per worker process
    work_per_process: int = 100  # backlog of 10 ms tasks per worker process
    restart_samples: int = 7
    idle_seconds: float = 10.0
    bigtable_rows: int = 1_000_000  # finished rows in the task table for the big table figure
    bigtable_rounds: int = 5  # noop throughput runs on each table; the best counts
    figures: tuple[str, ...] = FIGURES

    @property
    def top(self) -> int:
        return max(self.processes)


QUICK = Plan(
    latency_samples=15,
    bare_latency_samples=5,
    run_after_samples=5,
    bare_run_after_samples=3,
    noop_per_process=40,
    work_per_process=15,
    restart_samples=3,
    idle_seconds=3.0,
    bigtable_rows=100_000,
    bigtable_rounds=2,
)


@dataclass(frozen=True, slots=True)
class Step:
    key: str  # where a failure is recorded in Results.errors
    run: Callable[[harness.Workers], None]


class Bench:
    """Runs the sessions of a plan: one set of workers at a time, each measured in steps."""

    def __init__(
        self, plan: Plan, workspace: Path, postgres: Database, sqlite: Database, broker: celeryside.Broker
    ) -> None:
        self.plan = plan
        self.workspace = workspace
        self.postgres = postgres
        self.sqlite = sqlite
        self.broker = broker
        self.results = Results()
        self.began = time.monotonic()

    def progress(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", file=sys.stderr, flush=True)

    def run(self) -> Results:
        for n in self.plan.processes:
            for kind in KINDS:
                self.session(self.postgres, kind, n, self.postgres_steps(kind, n))
            self.celery(n)
        if "restart" in self.plan.figures:
            self.session(self.postgres, "supervisor", 1, [self.restart_step("exec")], start="exec")
            self.attempt("restart/bare", self.bare_boot)
        if "throughput" in self.plan.figures:
            for n in self.plan.processes:
                for kind in KINDS:
                    self.session(self.sqlite, kind, n, self.throughput_steps(self.sqlite, kind, n))
        if "bigtable" in self.plan.figures:  # last: it leaves the filled table behind
            steps = [Step(f"bigtable/{s}", functools.partial(self.table_figures, s)) for s in bigtable.STATES]
            self.session(self.postgres, "supervisor", BIGTABLE_PROCESSES, steps, tag="bigtable")
        return self.results

    def postgres_steps(self, kind: str, n: int) -> list[Step]:
        wants = self.plan.figures
        steps = []
        if "latency" in wants and n in (1, self.plan.top):
            steps.append(self.latency_step(kind, n, None))
        if "latency" in wants and n == 1:
            steps.append(self.latency_step(kind, n, RUN_AFTER))
        if "restart" in wants and kind == "supervisor" and n == 1:
            steps.append(self.restart_step("fork"))
        steps += self.throughput_steps(self.postgres, kind, n)
        if ("cpu" in wants or "memory" in wants) and n == self.plan.top:
            steps.append(Step(f"idle/{kind}", self.idle))
        return steps

    def session(self, db: Database, kind: str, n: int, steps: list[Step], start: str = "fork", tag: str = "") -> None:
        if not steps:
            return
        name = f"{db.engine}-{kind}-{start}-{n}" if kind == "supervisor" else f"{db.engine}-{kind}-{n}"
        name += f"-{tag}" if tag else ""
        self.progress(f"{name}: starting {n} {'children' if kind == 'supervisor' else 'db_workers'}")
        workers: harness.Workers
        if kind == "supervisor":
            workers = harness.Supervised(db, n, self.workspace, name, start)
        else:
            workers = harness.BareWorkers(db, n, self.workspace, name)
        try:
            with workers:
                for step in steps:
                    self.attempt(step.key, functools.partial(step.run, workers))
        except BenchError as exc:
            self.progress(f"{name}: {exc}")
            for step in steps:
                self.results.errors.setdefault(step.key, str(exc).splitlines()[0])

    def attempt(self, key: str, action: Callable[[], None]) -> None:
        """Take one figure; a failure is recorded under ``key`` and the benchmark goes on."""
        self.progress(f"  {key}")
        try:
            action()
        except Exception as exc:
            if not isinstance(exc, BenchError):
                traceback.print_exc()
            self.results.errors[key] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.progress(f"  {key} failed: {self.results.errors[key]}")

    def latency_step(self, kind: str, n: int, run_after: float | None) -> Step:
        key = latency_key(kind, n, "now" if run_after is None else "run_after")
        bare = kind == "bare"
        if run_after is None:
            samples = self.plan.bare_latency_samples if bare else self.plan.latency_samples
        else:
            samples = self.plan.bare_run_after_samples if bare else self.plan.run_after_samples
        gap = BARE_GAP if bare else SUPERVISOR_GAP

        def run(workers: harness.Workers) -> None:
            pickup = measure.pickup_latency(workers.db, samples, gap, run_after)
            self.results.latency[key] = pickup.latency
            if pickup.after_enqueue is not None:
                self.results.latency[latency_key(kind, n, "after_enqueue")] = pickup.after_enqueue

        return Step(f"latency/{key}", run)

    def backlogs(self, n: int) -> dict[str, int]:
        """The throughput figure's backlog of each task for N workers."""
        return {"noop": self.plan.noop_per_process * n, "10ms": self.plan.work_per_process * n}

    def throughput_steps(self, db: Database, kind: str, n: int) -> list[Step]:
        if "throughput" not in self.plan.figures:
            return []
        return [self.throughput_step(db, task, count, kind, n) for task, count in self.backlogs(n).items()]

    def throughput_step(self, db: Database, task: str, count: int, kind: str, n: int) -> Step:
        key = throughput_key(db.engine, task, kind, n)

        def run(workers: harness.Workers) -> None:
            self.results.throughput[key] = measure.throughput(db, task, count)

        return Step(key, run)

    def restart_step(self, method: str) -> Step:
        def run(workers: harness.Workers) -> None:
            assert isinstance(workers, harness.Supervised)
            self.results.restart[method] = measure.restart_times(workers, self.plan.restart_samples)

        return Step(f"restart/{method}", run)

    def bare_boot(self) -> None:
        database.clear(self.postgres)
        self.results.restart["bare"] = measure.boot_times(self.postgres, self.workspace, self.plan.restart_samples)

    def celery(self, n: int) -> None:
        """Celery's figures for N pool children: a worker started for each (benchkit.celeryside)."""
        if "latency" in self.plan.figures and n in (1, self.plan.top):
            self.attempt(f"latency/{latency_key('celery', n, 'now')}", functools.partial(self.celery_latency, n))
        if "throughput" in self.plan.figures:
            for task, count in self.backlogs(n).items():
                self.attempt(celery_key(task, n), functools.partial(self.celery_throughput, task, count, n))

    def celery_latency(self, n: int) -> None:
        samples = self.plan.latency_samples
        pickup = celeryside.pickup_latency(self.broker, n, self.workspace, f"celery-{n}", samples, SUPERVISOR_GAP)
        self.results.latency[latency_key("celery", n, "now")] = pickup.latency
        if pickup.after_enqueue is not None:
            self.results.latency[latency_key("celery", n, "after_enqueue")] = pickup.after_enqueue

    def celery_throughput(self, task: str, count: int, n: int) -> None:
        name = f"celery-{n}-{task}"
        self.results.throughput[celery_key(task, n)] = celeryside.throughput(
            self.broker, task, count, self.workspace, name, n
        )

    def table_figures(self, state: str, workers: harness.Workers) -> None:
        """Pickup latency samples and noop throughput runs on the empty, filled or emptied table."""
        db, since, rows = workers.db, None, 0
        if state == "filled":
            rows = self.plan.bigtable_rows
            self.progress(f"  filling the task table with {rows:,} finished rows")
            since = bigtable.fill(db, rows)  # the history is enqueued before it and kept
            self.progress("  filled")
        database.clear(db, since)  # "emptied": the history goes too
        samples, rounds = (
            bigtable.share(self.plan.latency_samples, state),
            bigtable.share(self.plan.bigtable_rounds, state),
        )
        latency, _ = measure.pickup_samples(db, samples, SUPERVISOR_GAP)
        count = self.plan.noop_per_process * BIGTABLE_PROCESSES
        runs = [measure.throughput(db, "noop", count, since) for _ in range(rounds)]
        key = bigtable.figure_key(state)
        self.results.bigtable[key] = self.results.bigtable.get(key, bigtable.TableFigures(rows)).add(latency, runs)

    def idle(self, workers: harness.Workers) -> None:
        database.clear(workers.db)
        time.sleep(IDLE_SETTLE)
        if "cpu" in self.plan.figures:
            self.results.idle_cpu[workers.kind] = measure.idle_cpu(workers, self.plan.idle_seconds)
        if "memory" in self.plan.figures:
            self.results.memory[workers.kind] = measure.memory(workers)


def rows(plan: Plan, results: Results) -> list[report.Row]:
    found = report.latency_rows(results, plan.processes, "now", "pickup latency")
    found += report.latency_rows(results, plan.processes, "after_enqueue", "pickup after enqueue() returned")
    found += report.latency_rows(results, (1,), "run_after", "run_after latency")
    for engine, label in (("postgres", "PostgreSQL"), ("sqlite", "SQLite")):
        for task in ("noop", "10ms"):
            found += report.throughput_rows(results, engine, label, task, plan.processes)
    found += report.restart_rows(results)
    if "memory" in plan.figures or "cpu" in plan.figures:
        found += report.resource_rows(results, plan.top)
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of about two minutes")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="measure only these figures")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (configs, worker logs) for a look")
    return parser.parse_args(argv)


def run(plan: Plan, args: argparse.Namespace) -> int:
    broker = celeryside.Broker()
    with harness.Workspace(args.keep) as workspace, database.postgres_database() as postgres:
        sqlite = database.sqlite_database(workspace.path)
        database.setup_django(postgres, sqlite)
        for db in (postgres, sqlite):
            database.migrate(db)
        versions = {db.engine: database.server_version(db) for db in (postgres, sqlite)}
        info = report.machine(versions)
        info["when"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        try:
            results = Bench(plan, workspace.path, postgres, sqlite, broker).run()
        finally:
            with uninterrupted():
                broker.cleanup()
        info |= broker.info()
        info["load_average_end"] = round(os.getloadavg()[0], 2)
    table_rows = rows(plan, results)
    history = report.bigtable_rows(results)
    print(report.header(info, plan.processes))
    if table_rows:
        print()
        print(report.main_table(table_rows))
    if history:
        print()
        print(report.bigtable_table(history, plan.bigtable_rows, BIGTABLE_PROCESSES))
    for key, error in results.errors.items():
        print(f"error in {key}: {error}")
    if args.json:
        report.write_json(args.json, info, plan, results, table_rows, history)
    return 1 if results.errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.only:
        plan = replace(plan, figures=tuple(args.only))
    interrupt_on_term()
    try:
        code = run(plan, args) if set(plan.figures) - {"limits", "dashboard"} else 0
        if "limits" in plan.figures:
            # Its own process: it runs the tests' project, with settings of its own.
            tasks, rounds = ("500", "1") if args.quick else (str(LIMITS_TASKS), "3")
            print()
            flow = [sys.executable, str(Path(__file__).with_name("flow.py")), "--tasks", tasks, "--rounds", rounds]
            code = subprocess.run(flow, check=False).returncode or code
        if "dashboard" in plan.figures:
            rows = str(100_000 if args.quick else DASHBOARD_ROWS)
            print()
            page = [sys.executable, str(Path(__file__).with_name("dashboard.py")), "--rows", rows]
            code = subprocess.run(page, check=False).returncode or code
        return code
    except KeyboardInterrupt:
        print("Interrupted: every process stopped, database and files removed.", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
