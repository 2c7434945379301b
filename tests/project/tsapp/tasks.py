"""Tiny tasks the real-process tests run: they sleep, crash, exit and record where they ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django_tasks_db.compat import Task  # noqa: F401  (the live framework's Task)

try:
    from django.tasks import task
except ImportError:  # Django < 6
    from django_tasks import task


def mark(marker: str) -> None:
    """Write this process's pid to ``marker``, so a test knows the task has started: written
    aside and renamed, so a test that sees the file never reads it empty."""
    Path(f"{marker}.part").write_text(str(os.getpid()))
    os.replace(f"{marker}.part", marker)


@task()
def noop() -> None:
    return None


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="reports")
def report(n: int) -> str:
    return f"report {n}"


@task()
def sleep(seconds: float, marker: str = "") -> float:
    """Sleep; with a marker path, write this process's pid there first (``mark``)."""
    if marker:
        mark(marker)
    time.sleep(seconds)
    return seconds


@task()
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@task()
def exit_process(code: int = 3) -> None:
    os._exit(code)


@task()
def pid() -> int:
    return os.getpid()


@task()
def argv0() -> str:
    """The child's sys.argv[0]: worker/__main__.py in an exec'd child, the supervisor's in a forked one."""
    import sys

    return sys.argv[0]


@task()
def stubborn(seconds: float, marker: str = "") -> str:
    """Catch TaskTimeout and TaskCancelled and keep sleeping: only the hard kill stops it."""
    from task_supervisor import TaskCancelled, TaskTimeout

    if marker:
        mark(marker)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except (TaskTimeout, TaskCancelled):
            Path(marker + ".caught").write_text("caught")
    return "survived"


@task()
def cleanup_on_timeout(seconds: float, marker: str) -> None:
    """Catch TaskTimeout, clean up, and let it propagate."""
    from task_supervisor import TaskTimeout

    try:
        time.sleep(seconds)
    except TaskTimeout:
        Path(marker).write_text("cleaned up")
        raise


@task()
def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


_HOARD: list[bytes] = []


@task()
def leak(megabytes: int, hold_seconds: float = 0.0) -> int:
    """Keep memory alive after the task returns, the way a real leak does."""
    _HOARD.append(os.urandom(megabytes * 2**20))
    time.sleep(hold_seconds)
    return len(_HOARD)


@task()
def flaky(counter: str, failures: int, exception: str = "ConnectionError") -> int:
    """Fail the first ``failures`` times (counted in a file), then succeed."""
    import builtins

    path = Path(counter)
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if runs <= failures:
        raise getattr(builtins, exception)(f"failure {runs}")
    return runs


@task()
def always_fails(log: str) -> None:
    """Append the time of each attempt to ``log``, then fail."""
    with open(log, "a") as attempts:
        attempts.write(f"{time.time()}\n")
    raise ConnectionError("always fails")


@task()
def unserialisable() -> object:
    """Return what JSON cannot hold: the row must end FAILED, and the worker go on."""
    return object()


@task()
def hold(marker: str, release: str, timeout: float = 60.0) -> str:
    """Touch ``marker`` (with the pid), then wait for ``release`` to appear; raise if it says "fail".

    The fencing tests take the row from its worker while the task waits.
    """
    mark(marker)
    deadline = time.monotonic() + timeout
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} did not appear within {timeout}s")
        time.sleep(0.02)
    if Path(release).read_text() == "fail":
        raise ValueError("told to fail")
    return "held"


def _stamp(path: str, word: str) -> None:
    with open(path, "a") as runs:
        runs.write(f"{word} {os.getpid()} {time.time():.6f} {time.monotonic():.6f}\n")


def _wait(seconds: float) -> None:
    """Sleep by select: under libfaketime 0.9.10 with monotonic clocks left true, time.sleep
    fails with EINVAL. A signal handler's exception (LeaseExpired) still cuts it short."""
    import select

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


@task()
def interval_task(path: str, seconds: float, rerun_seconds: float | None = None) -> str:
    """Append "start <pid> <wall> <monotonic>" to ``path``, wait, and "end ..." however the run
    ends: the never-twice tests read from the file when each execution ran. Whatever stops it
    (LeaseExpired, TaskTimeout) propagates; only the end line is written first. A run that finds
    the file there already (a rerun) waits ``rerun_seconds`` when given."""
    rerun = rerun_seconds is not None and Path(path).exists()
    _stamp(path, "start")
    try:
        _wait(rerun_seconds if rerun_seconds is not None and rerun else seconds)
    finally:
        _stamp(path, "end")
    return "done"


# -- flow control (tests/realproc/test_flow.py): each run appends its start and end to a log ------


def _log_run(out: str, name: str, line: str) -> None:
    with open(Path(out) / f"{name}.log", "a") as file:  # one short O_APPEND write: atomic
        file.write(line)


@task()
def keyed(account_id: str, out: str = "", seconds: float = 0.0) -> str:
    """Limited per account_id in the tests' config: log "start <t> <pid>" then "end <t> <pid>"."""
    if out:
        _log_run(out, f"key-{account_id}", f"start {time.time():.6f} {os.getpid()}\n")
    time.sleep(seconds)
    if out:
        _log_run(out, f"key-{account_id}", f"end {time.time():.6f} {os.getpid()}\n")
    return account_id


@task()
def unlimited(n: int, out: str = "", seconds: float = 0.0) -> int:
    """Never limited: logs its start, to time it against the limited tasks around it."""
    if out:
        _log_run(out, "unlimited", f"start {time.time():.6f} {n}\n")
    time.sleep(seconds)
    return n


# -- workflows (tests/realproc/test_workflows.py, tests/chaos/test_workflow_kills.py) ------------


@task()
def total(values: list, plus: int = 0) -> int:
    """A chord's callback: the sum of its members' results."""
    return sum(values) + plus


@task()
def slow_add(a: int, b: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return a + b


@task()
def echo(value: object) -> object:
    """An error callback: returns what it was told, so a test reads it from the row."""
    return value


@task()
def die_after_verdict(marker: str, value: int) -> int:
    """Succeeds; then its child dies before handing over (tsapp/apps.py's receiver)."""
    return value
