"""What the chaos tests share: configs with endpoints, task rows, killing children, figures.

Figures: each test ends with ``Figures(...).report()``; the line is printed (``pytest tests/chaos
-s``) and appended as one JSON object per line to the file named by ``TS_CHAOS_FIGURES`` (a
temporary file unless set), from which the terminal summary shows this session's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from task_supervisor.chores.janitor import CHORES_DEADLINE
from tests.support import SupervisorProcess, config_toml, wait_until

LOST_CLASS = "task_supervisor.WorkerLost"
PROBE_EVERY = 0.05  # seconds between probes of /livez and /readyz
PROBE_TIMEOUT = 5.0  # seconds a probe waits for an answer
# Seconds within which /livez must answer, database or not: each blocking call of the loop (its
# database chores, a LISTEN connect) is time-boxed (CHORES_DEADLINE, 2.5 s), one per turn; the
# rest is margin for a turn's other work and a probe on a loaded two-core machine.
LIVEZ_WITHIN = CHORES_DEADLINE + 1.5
ENQUEUE_BATCH = 25  # tasks per enqueue transaction (SQLite takes one lock per transaction)
ENQUEUE_ATTEMPTS = 5  # tries of one batch, when MariaDB picks it as a deadlock victim
MYSQL_DEADLOCK = 1213  # ER_LOCK_DEADLOCK
FIGURES_ENV = "TS_CHAOS_FIGURES"

_STARTED = re.compile(r"Started child (\S+) pid=(\d+)")
_REQUEUED = re.compile(r"Task (\S+) requeued \(attempt \d+, \w+\): (.*)")
_SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique_node(prefix: str = "chaos") -> str:
    """A node name of its own: its control socket and heartbeat never meet another test's."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Observed:
    """A config with its HTTP port and control socket, for readiness, metrics and status."""

    text: str
    port: int
    socket: str


def observed_config(pools: str, tmp_path: Path, node: str) -> Observed:
    port = free_port()
    sock = str(tmp_path / f"{node}.sock")
    lines = f'http = "127.0.0.1:{port}"\ncontrol_socket = "{sock}"\n'
    return Observed(config_toml(pools, node=node).replace('http = ""\n', lines), port, sock)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 while nothing answers."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def metric(text: str, name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly ``labels`` (in any order) in a Prometheus exposition; 0 when absent."""
    for line in text.splitlines():
        match = _SAMPLE.fullmatch(line)
        if match and match["name"] == name and dict(_LABEL.findall(match["labels"] or "")) == labels:
            return float(match["value"])
    return 0.0


# -- task rows ------------------------------------------------------------------------------


def rows() -> Any:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.all()


def status_counts() -> Counter[str]:
    return Counter(rows().values_list("status", flat=True))


def all_finished(total: int) -> bool:
    counts = status_counts()
    return sum(counts.values()) == total and counts["SUCCESSFUL"] + counts["FAILED"] == total


def wait_all_finished(total: int, sup: SupervisorProcess, timeout: float = 120.0) -> None:
    def done() -> bool:
        assert sup.proc is not None and sup.proc.poll() is None, f"the supervisor died:\n{sup.tail()}"
        return all_finished(total)

    wait_until(
        done,
        timeout,
        interval=0.2,
        message=lambda: f"{total} tasks finished, have {dict(status_counts())}; log:\n{sup.tail()}",
    )


# -- load -----------------------------------------------------------------------------------


@dataclass
class Feeder:
    """Enqueues ``total`` tasks evenly over ``seconds``; remembers what each add must return."""

    total: int
    seconds: float
    sent: int = 0
    expected: dict[str, int] = field(default_factory=dict)  # task id -> return value of an add

    def top_up(self, elapsed: float) -> None:
        due = min(self.total, int(self.total * min(1.0, elapsed / self.seconds)) + ENQUEUE_BATCH)
        while self.sent < due:
            self.enqueue(min(ENQUEUE_BATCH, self.total - self.sent))

    def enqueue(self, count: int) -> None:
        """One batch in one transaction, tried again as a producer would if MariaDB under
        REPEATABLE READ picks it as a deadlock's victim (the claims' next-key locks; the
        supervisor's check warns of it): nothing of a rolled-back batch is counted."""
        from django.db import OperationalError

        for attempt in range(ENQUEUE_ATTEMPTS):
            try:
                expected = self._batch(count)
            except OperationalError as exc:
                if exc.args[:1] != (MYSQL_DEADLOCK,) or attempt == ENQUEUE_ATTEMPTS - 1:
                    raise
                continue
            self.expected.update(expected)
            self.sent += count
            return

    def _batch(self, count: int) -> dict[str, int]:
        from django.db import transaction
        from tsapp import tasks

        expected = {}
        with transaction.atomic():
            for n in range(self.sent, self.sent + count):
                if n % 2:
                    tasks.noop.enqueue()
                else:
                    expected[str(tasks.add.enqueue(n, 1).id)] = n + 1
        return expected


# -- children -------------------------------------------------------------------------------


def live_children(sup: SupervisorProcess) -> list[psutil.Process]:
    """The supervisor's children that have not exited (a child may die while we look)."""
    alive = []
    try:
        children = psutil.Process(sup.pid).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def worker_ids_by_pid(*logs: str) -> dict[int, str]:
    """pid -> worker id, from the supervisor's "Started child ID pid=N" lines."""
    found: dict[int, str] = {}
    for text in logs:
        found.update({int(pid): worker_id for worker_id, pid in _STARTED.findall(text)})
    return found


def started_twice(log: str) -> set[str]:
    """Ids of tasks requeued after they had started: they ran more than once.

    A row its child claimed but never started goes back to READY as well; that is no rerun.
    """
    return {m[1] for m in _REQUEUED.finditer(log) if "before starting it" not in m[2]}


def kill(pid: int, signum: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: Iterable[int], timeout: float) -> float:
    """Seconds until none of ``pids`` runs any more (zombies count as gone)."""
    started = time.monotonic()

    def gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_until(gone, timeout, message=f"processes {sorted(pids)} to exit")
    return time.monotonic() - started


# -- probing ------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # monotonic
    livez: int
    livez_seconds: float
    readyz: int
    reasons: str


@dataclass
class Probe:
    """Polls /livez and /readyz from a thread, as a kubelet would, only much faster."""

    port: int
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            livez, _ = http_get(self.port, "/livez", timeout=PROBE_TIMEOUT)
            took = time.monotonic() - started
            readyz, body = http_get(self.port, "/readyz", timeout=PROBE_TIMEOUT)
            self.samples.append(Sample(started, livez, took, readyz, body.decode(errors="replace")))
            self.stop.wait(PROBE_EVERY)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]

    def first(self, after: float, readyz: int) -> float | None:
        """Seconds after ``after`` until /readyz first answered ``readyz``."""
        return next((s.at - after for s in self.samples if s.at >= after and s.readyz == readyz), None)

    def slowest_livez(self, start: float, end: float) -> Sample:
        return max(self.between(start, end), key=lambda s: (s.livez != 200, s.livez_seconds))


@contextmanager
def probing(port: int) -> Iterator[Probe]:
    """Probe /livez and /readyz from a thread for the duration of the block."""
    probe = Probe(port)
    thread = threading.Thread(target=probe.run, name="probe", daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        probe.stop.set()
        thread.join(PROBE_TIMEOUT * 3)


# -- figures --------------------------------------------------------------------------------


@dataclass
class Figures:
    """One run's numbers, as docs/chaos.md tabulates them."""

    test: str
    database: str
    tasks: int = 0
    children_killed: int = 0
    faults: list[str] = field(default_factory=list)
    lost: int = 0  # tasks neither SUCCESSFUL nor recorded FAILED: must stay 0
    duplicates: int = 0  # tasks that ran more than once
    failed_worker_lost: int = 0
    recovery_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def report(self) -> None:
        data = {k: v for k, v in self.__dict__.items() if v not in ({}, [])}
        if self.recovery_seconds:
            data["recovery_seconds"] = {k: round(v, 2) for k, v in self.recovery_seconds.items()}
        data["seconds"] = round(self.seconds, 1)
        line = json.dumps(data, sort_keys=False)
        print(f"\nCHAOS {line}")
        path = os.environ.get(FIGURES_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(line + "\n")
