"""The child's end of the control pipe (format in ``task_supervisor.wire.control``): reads the
supervisor's lines, raises TaskTimeout or LeaseExpired in the running task, answers pings, holds
the node's lease, and sleeps interruptibly.

The lease is the child's own guard for when its supervisor cannot act (frozen, stopped, a VM
paused): while a task runs, SIGALRM is armed for the moment the lease it last heard of stops
covering tasks. If no renewal came by then, LeaseExpired is raised inside the task, and the
alarm is re-armed with its default action, which ends the process LEASE_GRACE later whatever the
task is doing. No claim is made without a lease (``lease_valid``, checked by rowguard), and no
verdict is written without one (the fence).

A verdict refused for want of the lease leaves the row RUNNING under this worker's id, and the
worker then exits instead of reporting the task finished (``task_finished``): its supervisor
records the row by the pool's on_worker_lost, with the conditional update that leaves it alone if
another node recovered it first. Were the worker to live on, a lease renewed before any other
node may recover the row (a short partition or freeze) would strand it RUNNING for good: the
sweep never takes a live worker's row, and no other node sees the node dead.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from typing import Any

from task_supervisor import events
from task_supervisor.exceptions import LeaseExpired, TaskCancelled, TaskTimeout
from task_supervisor.wire import protocol
from task_supervisor.wire.control import LEASE_GRACE, LEASE_MARGIN, TIMEOUT_SIGNAL
from task_supervisor.wire.spec import CHILD_EXIT_LEASE_LOST

log = logging.getLogger("task_supervisor.worker")


class CurrentTask:
    """The task this child runs right now, as the framework's signals tell it."""

    task_id: str | None = None
    path: str = ""


class ControlChannel:
    """Child side: reads the pipe, raises timeouts, and sleeps interruptibly."""

    def __init__(
        self, fd: int, current: CurrentTask, reporter: protocol.Reporter | None = None, leased: bool = False
    ) -> None:
        self.fd = fd
        self.current = current
        self.reporter = reporter or protocol.Reporter(-1)
        self.leased = leased  # False when the node keeps no heartbeat: no lease to hold
        self.lease_until: float | None = None  # monotonic seconds, as last heard
        self.stopping = False  # LeaseExpired was raised in the running task: never twice
        self.stranded = False  # the running task's verdict was refused for want of the lease
        self.pending = bytearray()
        # Seconds between idle polls while the supervisor hears of new tasks (``poll``); None:
        # db_worker's own interval.
        self.poll_every: float | None = None
        os.set_blocking(fd, False)

    def _lines(self) -> list[str]:
        try:
            while chunk := os.read(self.fd, 4096):
                self.pending.extend(chunk)
        except (BlockingIOError, InterruptedError):
            pass
        *lines, rest = bytes(self.pending).split(b"\n")
        self.pending[:] = rest
        return [line.decode() for line in lines]

    def _handle(self, lines: list[str], raising: bool = True) -> bool:
        """Raise TaskTimeout or LeaseExpired if one is for the running task (when ``raising``);
        True if there was a wake."""
        woken = False
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "wake":
                woken = True
            elif word == "lease":
                self.lease_until = float(rest)
            elif word == "poll":
                self.poll_every = None if rest == "-" else float(rest)
            elif word == "ping":
                self.reporter.send(protocol.PONG, seq=int(rest))
            elif word == "timeout" and raising:
                task_id, _, seconds = rest.partition(" ")
                # A late notice for a task that already finished is ignored.
                if task_id == self.current.task_id:
                    raise TaskTimeout(f"Task {self.current.path} ran past its timeout of {seconds}s.")
            elif word == "cancel" and raising and rest == self.current.task_id:
                raise TaskCancelled(f"Task {self.current.path} was cancelled by an operator.")
            elif word == "lease-lost" and raising and self.current.task_id is not None and not self.stopping:
                # Once per task: the child's own alarm and the supervisor's notice come at the same
                # moment, and a second raise would land in the task's clean-up or in db_worker.
                self.lease_expired("its supervisor could not renew the node's lease")
        return woken

    def on_timeout_signal(self, signum: int, frame: Any) -> None:
        self._handle(self._lines())

    # -- the lease -------------------------------------------------------------------------

    def lease_valid(self) -> bool:
        """May this child claim or finish a task now? Reads renewals first; raises nothing."""
        self._handle(self._lines(), raising=False)
        if not self.leased:
            return True
        valid = self.lease_until is not None and time.monotonic() < self.lease_until - LEASE_MARGIN
        if not valid and self.current.task_id is not None:
            self.stranded = True  # asked mid-task, by the fence: the verdict is not written
        return valid

    def task_started(self) -> None:
        self.stopping = self.stranded = False
        if self.leased:
            signal.signal(signal.SIGALRM, self.on_alarm)
            self._arm()

    def task_finished(self) -> None:
        """Called before the task is reported finished. If its row was left RUNNING for want of
        the lease, the process ends here, so the supervisor records the row as a dead worker's."""
        if self.stranded:
            # At once, not by SystemExit: db_worker would catch that as the task's failure and
            # try to write it. The fence logged task_fenced; the supervisor logs the exit.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(CHILD_EXIT_LEASE_LOST)
        if self.leased:
            signal.setitimer(signal.ITIMER_REAL, 0)  # also calls off a pending hard stop
            signal.signal(signal.SIGALRM, signal.SIG_IGN)

    def _arm(self) -> None:
        left = (self.lease_until or 0.0) - LEASE_MARGIN - time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, max(0.001, left))

    def on_alarm(self, signum: int, frame: Any) -> None:
        self._handle(self._lines())
        if self.lease_until is not None and time.monotonic() < self.lease_until - LEASE_MARGIN:
            self._arm()  # renewed in the meantime
        elif self.current.task_id is not None and not self.stopping:
            self.lease_expired("no renewal of the node's lease reached this worker (its supervisor frozen?)")

    def lease_expired(self, why: str) -> None:
        """Stop the running task now; if it has not stopped LEASE_GRACE later, the kernel ends us."""
        self.stopping = True
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, LEASE_GRACE)
        task_id = self.current.task_id
        log.error(
            "Task %s stopped: %s",
            task_id,
            why,
            extra={"event": events.LEASE_EXPIRED, "task_id": task_id, "pid": os.getpid()},
        )
        self.reporter.send(protocol.LEASE_EXPIRED, task_id=task_id)
        raise LeaseExpired(f"Task {self.current.path} was stopped: {why}.")

    def sleep(self, seconds: float) -> None:
        """db_worker's wait between polls, cut short by a wake; stretched to ``poll_every`` while
        the supervisor wakes this child for every new task (a ``poll`` line may come mid-wait)."""
        start = time.monotonic()
        if self._handle(self._lines()):
            return
        while (left := start + self._wait(seconds) - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready and self._handle(self._lines()):
                return
            if ready and not self.pending and _closed(self.fd):
                time.sleep(max(0.0, start + seconds - time.monotonic()))  # supervisor gone: plain sleep
                return

    def _wait(self, seconds: float) -> float:
        return seconds if self.poll_every is None else max(seconds, self.poll_every)

    def install(self, worker_module: Any) -> None:
        signal.signal(TIMEOUT_SIGNAL, self.on_timeout_signal)
        worker_module.time = _TimeWithInterruptibleSleep(self)


def _closed(fd: int) -> bool:
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False


class _TimeWithInterruptibleSleep:
    """Stands in for the ``time`` module inside db_worker's module: same, but for sleep()."""

    def __init__(self, channel: ControlChannel) -> None:
        self._channel = channel

    def sleep(self, seconds: float) -> None:
        self._channel.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)
