"""The figures, each taken on workers that are up and idle (see bench/README.md for the why)."""

from __future__ import annotations

import datetime
import os
import random
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchkit import database, harness
from benchkit.database import BenchError, Database
from task_supervisor.loop.pool import MIN_UPTIME

SAMPLE_TIMEOUT = 10.0  # seconds a single task may take to start before the figure is given up
BOOT_TIMEOUT = 60.0  # seconds for a fresh db_worker to start its first task
SETTLE_MARGIN = 0.3  # seconds past MIN_UPTIME, so a killed child counts as healthy, not a crash loop
WARMUP_TASKS = 3  # tasks run before latency samples are kept: first-task imports and query compiles
# The driver stays off the CPUs this long after an enqueue (or a kill) before it looks at the row:
# its own queries would otherwise compete with the pickup it measures (2 cores).
QUIET = 0.02  # seconds


@dataclass(frozen=True, slots=True)
class Distribution:
    """Milliseconds."""

    samples: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution:
        if not values:
            raise BenchError("no samples")
        p99 = statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]
        return cls(len(values), statistics.median(values), p99, max(values))


@dataclass(frozen=True, slots=True)
class Throughput:
    tasks: int
    failed: int
    seconds: float
    per_second: float


@dataclass(frozen=True, slots=True)
class IdleCpu:
    """Percent of one core."""

    main: float | None  # the supervisor process alone; None for bare workers
    tree: float  # every process of the set


@dataclass(frozen=True, slots=True)
class Memory:
    uss: int  # bytes
    pss: int  # bytes
    processes: int


def _ms(delta: datetime.timedelta) -> float:
    return delta.total_seconds() * 1000


@dataclass(frozen=True, slots=True)
class Pickup:
    latency: Distribution  # started_at - enqueued_at, or started_at - run_after
    after_enqueue: Distribution | None  # started_at - the moment enqueue() returned (committed)


def pickup_latency(db: Database, samples: int, gap: tuple[float, float], run_after: float | None = None) -> Pickup:
    """Enqueue one task at a time into idle workers; started_at minus enqueued_at (or run_after).

    Each task is enqueued a random ``gap`` (seconds) after the previous one started. The row's
    enqueued_at is stamped before the INSERT, so the latency includes the enqueue's own round
    trips; ``after_enqueue`` leaves them out.
    """
    latency, after_enqueue = pickup_samples(db, samples, gap, run_after)
    return Pickup(Distribution.of(latency), Distribution.of(after_enqueue) if run_after is None else None)


def pickup_samples(
    db: Database, samples: int, gap: tuple[float, float], run_after: float | None = None
) -> tuple[list[float], list[float]]:
    """pickup_latency's samples, in milliseconds: the latencies, and the pickups after enqueue()."""
    latency, after_enqueue = [], []
    for index in range(WARMUP_TASKS + samples):
        time.sleep(random.uniform(*gap))
        task_id = database.enqueue(db, "noop", run_after)
        returned = time.time()
        row = database.wait_started(db, task_id, SAMPLE_TIMEOUT, QUIET)
        reference = row.enqueued_at if run_after is None else row.run_after
        assert reference is not None
        if index >= WARMUP_TASKS:
            latency.append(_ms(row.started_at - reference))
            after_enqueue.append((row.started_at.timestamp() - returned) * 1000)
    return latency, after_enqueue


def throughput(db: Database, task: str, count: int, since: datetime.datetime | None = None) -> Throughput:
    """A backlog of ``count`` tasks committed at once; first started_at to last finished_at.

    The rows of earlier runs are deleted first: all of them, or those enqueued since ``since``
    (the rows before it are a history the run keeps, and leaves out of its figure).
    """
    database.clear(db, since)
    database.enqueue_backlog(db, task, count)
    database.wait_drained(db, timeout=60 + count * 0.1)
    span = database.window(db, since)
    if span.finished != count:
        raise BenchError(f"{span.finished} of {count} tasks finished")
    return Throughput(count, span.failed, span.seconds, count / span.seconds)


def restart_times(workers: harness.Supervised, samples: int) -> Distribution:
    """SIGKILL the idle child of a pool of one, enqueue a task at once: kill to task start.

    The replacement's first poll is what picks the task up, so this is the whole restart (reap,
    start, boot, connect, first poll) plus one claim, as a user sees it.
    """
    if workers.processes != 1:
        raise BenchError("restart times need a pool of one child")
    values, killed = [], 0
    for _ in range(samples):
        child = _settled_child(workers, killed)
        killed_at = time.time()
        os.kill(child.pid, signal.SIGKILL)
        row = database.wait_started(workers.db, database.enqueue(workers.db), SAMPLE_TIMEOUT, QUIET)
        if row.worker_id == child.worker_id:
            raise BenchError(f"the killed child {child.worker_id} ran the task")
        values.append((row.started_at.timestamp() - killed_at) * 1000)
        killed = child.pid
    return Distribution.of(values)


def _settled_child(workers: harness.Supervised, killed: int) -> harness.ChildInfo:
    """The pool's replacement child, idle and up long enough that its death is not a crash loop."""
    (child,) = workers.wait_idle(lambda children: children[0].pid != killed)
    time.sleep(max(0.0, child.started_at + MIN_UPTIME + SETTLE_MARGIN - time.time()))
    return child


def boot_times(db: Database, workspace: Path, samples: int) -> Distribution:
    """A fresh `manage.py db_worker` with a task waiting: spawn to that task's start.

    The first run is a warm-up (page cache) and is not kept.
    """
    values = []
    for index in range(samples + 1):
        task_id = database.enqueue(db)
        spawned_at = time.time()
        argv = harness.bare_argv(f"bare-boot-{index}", startup_delay=False)
        proc = harness.spawn(argv, db.worker_env(), workspace / "bare-boot.log")
        try:
            row = database.wait_started(db, task_id, BOOT_TIMEOUT)
        finally:
            harness.stop(proc)
        if index > 0:
            values.append((row.started_at.timestamp() - spawned_at) * 1000)
    return Distribution.of(values)


def idle_cpu(workers: harness.Workers, seconds: float) -> IdleCpu:
    """CPU time used while nothing is enqueued, as a percentage of one core."""
    processes = [psutil.Process(pid) for pid in workers.tree_pids()]
    before = [p.cpu_times() for p in processes]
    started = time.monotonic()
    time.sleep(seconds)
    after = [p.cpu_times() for p in processes]
    wall = time.monotonic() - started
    pairs = zip(processes, before, after, strict=True)
    used = {p.pid: (a.user - b.user + a.system - b.system) / wall * 100 for p, b, a in pairs}
    main = workers.main_pid()
    return IdleCpu(used[main] if main is not None else None, sum(used.values()))


def memory(workers: harness.Workers) -> Memory:
    """USS and PSS summed over every process of the set."""
    infos = [psutil.Process(pid).memory_full_info() for pid in workers.tree_pids()]
    return Memory(sum(i.uss for i in infos), sum(i.pss for i in infos), len(infos))
