"""Celery's prefork pool on Redis (bench/celeryapp.py), measured like the database workers.

Throughput: the backlog is published while no worker runs, then the worker starts; the figure
is the tasks over the time from the first task's start to the last one's finish, from the stamps
each task leaves (bench/celeryapp.py), so the worker's boot is not in it. Pickup latency: one
`noop` at a time into an idle worker; task start minus the moment before `apply_async()`.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchkit import harness
from benchkit.database import BenchError
from benchkit.measure import QUIET, SAMPLE_TIMEOUT, WARMUP_TASKS, Distribution, Pickup, Throughput

BENCH = Path(__file__).resolve().parents[1]  # where celeryapp.py is
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
READY_LINE = " ready."  # the worker logs "<node> ready." once it consumes
STAMPS_POLL = 0.01  # seconds between looks at the stamps while waiting for one task
CONNECT_TIMEOUT = 3.0  # seconds for Redis to answer the first PING


@dataclass(frozen=True, slots=True)
class Stamp:
    start: float  # epoch seconds, task_prerun
    finish: float  # epoch seconds, task_postrun
    state: str


class Broker:
    """The Redis server the Celery side runs on, and this run's name there (queue, exchanges).

    ``check()`` says, once, whether Celery can run at all; every Celery figure asks it first, so
    an unreachable Redis costs one failed connection and each figure records the same reason.
    """

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url = url
        self.name = f"ts_bench_{secrets.token_hex(4)}"
        self.server_version: str | None = None
        self._problem: str | None = None
        self._checked = False

    def check(self) -> None:
        if not self._checked:
            self._checked = True
            try:
                self.server_version = self._connect()
            except BenchError as exc:
                self._problem = str(exc)
        if self._problem is not None:
            raise BenchError(self._problem)

    def _connect(self) -> str:
        try:
            import celeryapp
            import redis
        except ImportError as exc:
            raise BenchError(f"Celery is not installed ({exc}); `make bench` installs the [bench] extra.") from exc
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT) as client:
                version = str(client.info("server")["redis_version"])
        except redis.RedisError as exc:
            raise BenchError(f"Redis at {self.url} did not answer ({exc}); set BENCH_REDIS_URL.") from exc
        celeryapp.configure(self.url, self.name)
        return version

    def info(self) -> dict[str, str | None]:
        try:
            celery = metadata.version("celery")
        except metadata.PackageNotFoundError:
            celery = None
        return {"celery": celery, "redis": self.server_version, "redis_url": self.url, "celery_problem": self._problem}

    def purge(self) -> None:
        """Drop whatever waits in the queue (a run that failed half-way)."""
        import celeryapp

        celeryapp.app.control.purge()

    def cleanup(self) -> None:
        """Delete every key of this run (queue, exchange bindings, reply queues), and its members
        of kombu's shared set of binding deadlines."""
        if self.server_version is None:
            return
        import redis
        from kombu.transport.redis import Channel

        deadlines = getattr(Channel, "keyprefix_binding_deadlines", None)  # kombu 5.7 on
        with redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT) as client:
            for key in client.scan_iter(match=f"*{self.name}*"):
                client.delete(key)
            if deadlines and client.type(deadlines) == b"zset":
                ours = [m for m in client.zrange(deadlines, 0, -1) if self.name.encode() in m]
                if ours:
                    client.zrem(deadlines, *ours)


class CeleryWorkers(harness.Started):
    """`celery worker --pool prefork --concurrency N`: a main process and N pool children."""

    kind = "celery"

    def __init__(self, broker: Broker, processes: int, workspace: Path, name: str) -> None:
        self.broker = broker
        self.processes = processes
        self.name = name
        self.log = workspace / f"{name}.log"
        self.stamps = workspace / f"{name}-stamps"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        shutil.rmtree(self.stamps, ignore_errors=True)
        self.stamps.mkdir()
        argv = [sys.executable, "-m", "celery", "-A", "celeryapp", "worker", "--pool", "prefork"]
        argv += ["--concurrency", str(self.processes), "--loglevel", "INFO", "--hostname", f"{self.name}@%h"]
        env = {
            "PYTHONPATH": str(BENCH),
            "BENCH_REDIS_URL": self.broker.url,
            "BENCH_CELERY_NAME": self.broker.name,
            "BENCH_CELERY_STAMPS": str(self.stamps),
            "DJANGO_SETTINGS_MODULE": "",  # the driver's: not for Celery
        }
        self.proc = harness.spawn(argv, env, self.log)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + harness.READY_TIMEOUT
        while READY_LINE not in harness.read_log(self.log):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not start within {harness.READY_TIMEOUT:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            harness.stop(self.proc)
            self.proc = None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.proc.returncode}:\n{harness.tail(self.log)}")

    def read_stamps(self) -> dict[str, Stamp]:
        """Every task run so far, by id; a line still being written is left for the next look."""
        found = {}
        for path in self.stamps.iterdir():
            for line in path.read_text().split("\n")[:-1]:
                task_id, start, finish, state = line.split()
                found[task_id] = Stamp(float(start), float(finish), state)
        return found

    def wait_stamp(self, task_id: str, timeout: float, first_look: float = 0.0) -> Stamp:
        deadline = time.monotonic() + timeout
        time.sleep(first_look)
        while time.monotonic() < deadline:
            stamp = self.read_stamps().get(task_id)
            if stamp is not None:
                return stamp
            self.check_alive()
            time.sleep(STAMPS_POLL)
        raise BenchError(f"task {task_id} did not start within {timeout:g}s")

    def wait_count(self, count: int, timeout: float) -> dict[str, Stamp]:
        deadline = time.monotonic() + timeout
        while len(stamps := self.read_stamps()) < count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{len(stamps)} of {count} tasks finished after {timeout:g}s")
            time.sleep(0.1)
        return stamps


def _task(name: str) -> Any:
    import celeryapp

    return celeryapp.TASKS[name]


def throughput(broker: Broker, task: str, count: int, workspace: Path, name: str, processes: int) -> Throughput:
    """Publish ``count`` tasks, then start the worker: the first task's start to the last's finish."""
    import celeryapp

    broker.check()
    broker.purge()
    target = _task(task)
    with celeryapp.app.producer_or_acquire() as producer:
        for _ in range(count):
            target.apply_async(producer=producer)
    with CeleryWorkers(broker, processes, workspace, name) as workers:
        stamps = workers.wait_count(count, timeout=60 + count * 0.1)
    seconds = max(s.finish for s in stamps.values()) - min(s.start for s in stamps.values())
    failed = sum(1 for s in stamps.values() if s.state != "SUCCESS")
    return Throughput(count, failed, seconds, count / seconds)


def pickup_latency(
    broker: Broker, processes: int, workspace: Path, name: str, samples: int, gap: tuple[float, float]
) -> Pickup:
    """One `noop` at a time into an idle worker: its start minus the moment before apply_async().

    Each is published a random ``gap`` (seconds) after the previous one started. ``after_enqueue``
    is the start minus the moment apply_async() returned (published).
    """
    broker.check()
    broker.purge()
    noop = _task("noop")
    latency, after_enqueue = [], []
    with CeleryWorkers(broker, processes, workspace, name) as workers:
        for index in range(WARMUP_TASKS + samples):
            time.sleep(random.uniform(*gap))
            enqueued = time.time()
            task_id = noop.apply_async().id
            returned = time.time()
            stamp = workers.wait_stamp(task_id, SAMPLE_TIMEOUT, QUIET)
            if index >= WARMUP_TASKS:
                latency.append((stamp.start - enqueued) * 1000)
                after_enqueue.append((stamp.start - returned) * 1000)
    return Pickup(Distribution.of(latency), Distribution.of(after_enqueue))
