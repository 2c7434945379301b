"""Starting and stopping what the benchmark measures: N bare db_workers, or one supervisor.

Every process starts in its own session, so a Ctrl-C in the terminal reaches the driver alone,
which then stops them in order; whatever is left at the end is killed with its whole tree.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from benchkit.database import PROJECT, BenchError, Database
from benchkit.signals import uninterrupted

STOP_GRACE = 15.0  # seconds a process gets after SIGTERM before its tree is killed
READY_TIMEOUT = 60.0  # seconds for workers to come up
STARTUP_DELAY_MAX = 1.0  # seconds: db_worker sleeps up to this before its first poll (no --no-startup-delay)
BARE_READY_LINE = "Starting worker"  # db_worker logs it as its loop begins


class Workspace:
    """A temporary folder for configs, logs, sockets and the SQLite file; removed at the end."""

    def __init__(self, keep: bool = False) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ts_bench_"))
        self.keep = keep

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            print(f"Kept the workspace (logs, configs): {self.path}", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=PROJECT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM and wait; then SIGKILL the process and everything it started."""
    with uninterrupted():
        tree = _tree(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        for process in tree + _tree(proc.pid):
            try:
                process.kill()
            except psutil.Error:
                pass
        proc.wait()
        psutil.wait_procs(tree, timeout=5)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Started:
    """A context manager that starts something and waits until it is up (stopping it again if it
    does not come up), and stops it on the way out."""

    def __enter__(self) -> Self:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Workers(Started):
    """N processes that run tasks, and whatever manages them; a context manager that stops them."""

    kind = ""

    def __init__(self, db: Database, processes: int, workspace: Path, name: str) -> None:
        self.db = db
        self.processes = processes
        self.workspace = workspace
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []

    def log(self, index: int = 0) -> Path:
        return self.workspace / f"{self.name}-{index}.log"


    def main_pid(self) -> int | None:
        """The managing process (the supervisor), if there is one."""
        return None

    def tree_pids(self) -> list[int]:
        """Every process of the set: the supervisor and its children, or the bare workers."""
        return [p.pid for proc in self.procs for p in _tree(proc.pid)]

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs.clear()

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise BenchError(f"{self.name} exited with code {proc.returncode}:\n{tail(self.log(index))}")


class BareWorkers(Workers):
    """N `manage.py db_worker` processes, exactly as a team without a supervisor runs them."""

    kind = "bare"

    def __init__(self, db: Database, processes: int, workspace: Path, name: str, startup_delay: bool = True) -> None:
        super().__init__(db, processes, workspace, name)
        self.startup_delay = startup_delay

    def start(self) -> None:
        for index in range(self.processes):
            self.procs.append(
                spawn(bare_argv(f"{self.name}-{index}", self.startup_delay), self.db.worker_env(), self.log(index))
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for index in range(self.processes):
            while BARE_READY_LINE not in read_log(self.log(index)):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name}-{index} did not start within {READY_TIMEOUT:g}s")
                time.sleep(0.05)
        if self.startup_delay:
            time.sleep(STARTUP_DELAY_MAX + 0.05)


def bare_argv(worker_id: str, startup_delay: bool = True) -> list[str]:
    argv = [sys.executable, str(PROJECT / "manage.py"), "db_worker", "--queue-name", "default", "--interval", "1"]
    argv += ["--no-reload", "--worker-id", worker_id]
    return argv if startup_delay else [*argv, "--no-startup-delay"]


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class ChildInfo:
    pid: int
    state: str
    worker_id: str
    started_at: float  # epoch seconds


CONFIG = """\
[django]
settings = "benchproject.settings"
pythonpath = [{project}]

[supervisor]
node = "{node}"
http = "127.0.0.1:0"
control_socket = {socket}
graceful_timeout = "10s"
{extra}

[pools.default]
queues = ["default"]
processes = {processes}
interval = "1s"
start = "{start}"

[scheduler]
enabled = false
"""


class Supervised(Workers):
    """`task-supervisor run` with one pool of N children, its defaults otherwise."""

    kind = "supervisor"

    def __init__(self, db: Database, processes: int, workspace: Path, name: str, start: str = "fork") -> None:
        super().__init__(db, processes, workspace, name)
        self.start_method = start
        self.config = workspace / f"{name}.toml"

    def start(self) -> None:
        self.config.write_text(
            CONFIG.format(
                project=json.dumps(str(PROJECT)),
                node=self.name,
                socket=json.dumps(str(self.workspace / f"{self.name}.sock")),
                processes=self.processes,
                start=self.start_method,
                extra="",
            )
        )
        self.procs.append(spawn([console_script(), "run", "-c", str(self.config)], self.db.worker_env(), self.log()))

    def main_pid(self) -> int | None:
        return self.procs[0].pid if self.procs else None

    def status(self) -> dict[str, Any]:
        """`task-supervisor status --json`: the supervisor's own view of its children."""
        done = subprocess.run(
            [console_script(), "status", "-c", str(self.config), "--json"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if done.returncode != 0:
            raise BenchError(f"status failed: {done.stderr.strip() or done.stdout.strip()}")
        return dict(json.loads(done.stdout))

    def children(self) -> list[ChildInfo]:
        pools = self.status()["pools"]
        return [
            ChildInfo(
                c["pid"], c["state"], c["worker_id"], datetime.datetime.fromisoformat(c["started_at"]).timestamp()
            )
            for pool in pools
            for c in pool["children"]
        ]

    def wait_ready(self) -> None:
        self.wait_idle(lambda children: True)

    def wait_idle(self, accept: Callable[[list[ChildInfo]], bool], timeout: float = READY_TIMEOUT) -> list[ChildInfo]:
        """Until all N children are idle and ``accept(children)`` holds; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                children = self.children()
            except BenchError:
                children = []  # not listening yet
            if len(children) == self.processes and all(c.state == "idle" for c in children) and accept(children):
                return children
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: children not idle within {timeout:g}s:\n{tail(self.log())}")
            time.sleep(0.1)


def console_script() -> str:
    script = Path(sys.executable).with_name("task-supervisor")
    if not script.exists():
        raise BenchError(f"{script} is missing; install the package into this environment (make bench does).")
    return str(script)
