"""The supervisor as a container's PID 1: the first process of a new PID namespace, which inherits
every orphan in it. It reaps them while it drains, finishes the task in flight and exits 0 within
the grace period. Runs as root (unshare needs it), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from task_supervisor import events, exitcodes
from tests.deploy.manifests import require_tool
from tests.realproc.test_supervision import ONE_POOL, wait_status
from tests.support import Database, SupervisorProcess, config_toml, wait_until

GRACEFUL_SECONDS = 20
TASK_SECONDS = 6.0  # long enough that the orphan comes and goes while the task runs
ORPHAN_SECONDS = "1"


@dataclass
class Pid1Supervisor(SupervisorProcess):
    """``task-supervisor run`` as PID 1 of its own PID namespace, with its own /proc, as in a pod.

    ``pid`` is the ``unshare`` around it, which exits with the supervisor's code; ``inner_pid`` is
    the supervisor's pid out here (inside its namespace, it is 1)."""

    def command(self) -> list[str]:
        return [require_tool("unshare"), "--pid", "--fork", "--mount-proc", *super().command()]

    @property
    def inner_pid(self) -> int:
        children = wait_until(lambda: psutil.Process(self.pid).children(), message="unshare to fork")
        (supervisor,) = children
        return supervisor.pid

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.inner_pid).children(recursive=True)


@pytest.fixture
def pid1_supervisor(tmp_path: Path, db: Database) -> Iterator[Callable[[str], Pid1Supervisor]]:
    started: list[Pid1Supervisor] = []

    def start(config_text: str) -> Pid1Supervisor:
        workdir = tmp_path / "pid1"
        workdir.mkdir()
        started.append(Pid1Supervisor(workdir, db, config_text).start())
        return started[-1]

    yield start
    for sup in started:
        sup.stop()  # SIGKILL to a namespace's PID 1 kills everything in it


def namespace_pid(host_pid: int) -> int:
    """The pid a process has in the innermost PID namespace it belongs to."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {host_pid}")


def leave_orphan(sup: Pid1Supervisor, seconds: str) -> psutil.Process:
    """Start ``sleep`` inside the namespace from a shell that exits at once, as a `kubectl exec`
    does with a background job: the sleep is reparented to PID 1, the supervisor."""
    script = f"sleep {seconds} </dev/null >/dev/null 2>&1 &"
    subprocess.run([require_tool("nsenter"), "-t", str(sup.inner_pid), "-p", "--", "sh", "-c", script], check=True)
    argv = ["sleep", seconds]
    return wait_until(
        lambda: next((p for p in psutil.Process(sup.inner_pid).children() if attribute(p, "cmdline") == argv), None),
        message="the orphaned sleep to be reparented to PID 1",
    )


def attribute(process: psutil.Process, name: str) -> object:
    """``process.<name>()``, or None once the process is gone."""
    try:
        return getattr(process, name)()
    except psutil.NoSuchProcess:
        return None


def zombies(sup: Pid1Supervisor) -> list[psutil.Process]:
    return [p for p in sup.descendants() if attribute(p, "status") == psutil.STATUS_ZOMBIE]


def test_as_pid_1_it_reaps_orphans_drains_and_exits_zero(pid1_supervisor, tmp_path):
    from tsapp import tasks

    # Its own control socket: the default one in /tmp is per node, and other suites use this node name.
    socket = f'control_socket = "{tmp_path / "control.sock"}"'
    sup = pid1_supervisor(config_toml(ONE_POOL, graceful=f"{GRACEFUL_SECONDS}s", extra=socket))
    assert namespace_pid(sup.inner_pid) == 1
    marker = tmp_path / "started"
    result = tasks.sleep.enqueue(TASK_SECONDS, str(marker))
    wait_until(marker.exists, message=lambda: f"the task to start; log:\n{sup.tail()}")

    orphan = leave_orphan(sup, ORPHAN_SECONDS)
    os.kill(sup.inner_pid, signal.SIGTERM)
    sent = time.monotonic()

    wait_until(lambda: not psutil.pid_exists(orphan.pid), timeout=10, message="the orphan to be reaped")
    assert sup.proc is not None and sup.proc.poll() is None, "reaped while draining, the task still running"
    assert not zombies(sup)

    assert sup.wait_exit(timeout=GRACEFUL_SECONDS + 10) == exitcodes.EX_OK, sup.tail()
    assert time.monotonic() - sent < GRACEFUL_SECONDS
    wait_status(result, "SUCCESSFUL", timeout=5)
    assert sup.has_event(events.DRAIN_STARTED) and not sup.has_event(events.CHILD_KILLED)
