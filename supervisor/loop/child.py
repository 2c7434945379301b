"""One worker child as the supervisor sees it: its state, its current task, how it ended."""

from __future__ import annotations

import enum
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from task_supervisor import events
from task_supervisor.loop.proc import ProcessCalls
from task_supervisor.wire import control, protocol
from task_supervisor.wire.spec import CHILD_EXIT_BOOT_FAILED, CHILD_EXIT_LEASE_LOST, ChildSpec

log = logging.getLogger("task_supervisor.loop.arbiter")


class ChildState(enum.Enum):
    STARTING = "starting"  # forked; has not reported ready yet
    IDLE = "idle"  # db_worker polling for tasks
    BUSY = "busy"  # running a task
    STOPPING = "stopping"  # asked to stop: finishes its task, then exits
    EXITED = "exited"  # reaped


# The only transitions change_state() allows.
TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.STARTING: frozenset({ChildState.IDLE, ChildState.STOPPING, ChildState.EXITED}),
    ChildState.IDLE: frozenset({ChildState.BUSY, ChildState.STOPPING, ChildState.EXITED}),
    ChildState.BUSY: frozenset({ChildState.IDLE, ChildState.STOPPING, ChildState.EXITED}),
    ChildState.STOPPING: frozenset({ChildState.EXITED}),
    ChildState.EXITED: frozenset(),
}


class ExitReason(enum.Enum):
    STOPPED = "stopped"  # we asked it to stop
    RECYCLED = "recycled"  # exited 0 on its own: db_worker reached --max-tasks
    BOOT_FAILED = "boot_failed"  # never became ready
    CRASHED = "crashed"  # non-zero exit or killed by a signal


@dataclass(frozen=True, slots=True)
class RunningTask:
    task_id: str
    path: str
    since: float  # monotonic seconds
    timeout: float | None = None  # seconds, from [task_timeouts] or the pool


def describe_status(status: int, killed_for: str | None = None) -> str:
    """'exited with code 3', 'killed by SIGSEGV (segmentation fault)' ...; ``killed_for`` is why
    the supervisor itself sent SIGKILL, if it did."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        name = signal.Signals(signum).name if signum in signal.Signals else str(signum)
        text = f"killed by {name}"
        if signum == signal.SIGKILL and killed_for:
            text += f" (by the supervisor: {killed_for})"
        elif signum == signal.SIGKILL:
            text += " (perhaps out of memory?)"
        elif signum == signal.SIGSEGV:
            text += " (segmentation fault)"
        return text
    code = os.waitstatus_to_exitcode(status)
    if code == CHILD_EXIT_LEASE_LOST:
        return f"exited with code {code} (its lease ran out mid-task: the verdict was left to recovery)"
    return f"exited with code {code}"


WAKE_ANSWER = 1.0  # seconds a woken child counts as busy claiming, unless it reports first

EXIT_EVENTS = {
    ExitReason.STOPPED: events.CHILD_STOPPED,
    ExitReason.RECYCLED: events.CHILD_RECYCLED,
    ExitReason.BOOT_FAILED: events.CHILD_BOOT_FAILED,
    ExitReason.CRASHED: events.CHILD_CRASHED,
}


class Child:
    """A worker process of a pool slot. ``change_state`` is the only place its state changes."""

    def __init__(
        self,
        spec: ChildSpec,
        pid: int,
        report_fd: int,
        now: float,
        control_fd: int = -1,
        calls: ProcessCalls | None = None,
    ) -> None:
        self.spec = spec
        self.pid = pid
        self.calls = calls or ProcessCalls()
        self.reader = protocol.Reader(report_fd)
        self.control_fd = control_fd
        self.state = ChildState.STARTING
        self.started_at = now
        self.ready_at: float | None = None
        self.task: RunningTask | None = None
        self.tasks_done = 0
        self.stop_requested_at: float | None = None
        self.kill_at: float | None = None  # monotonic deadline after which it is SIGKILLed
        self.killed_for: str | None = None  # why the supervisor SIGKILLed it, once it has
        self.boot_error: str | None = None
        self.timed_out: RunningTask | None = None  # the task told to raise TaskTimeout
        self.killed_for_timeout: RunningTask | None = None
        self.recycle_after_task = False  # passed max_memory while busy
        self.woken_at = 0.0  # monotonic time of the last wake sent
        self.claimed_at = 0.0  # monotonic time of its last claim attempt's report (a start, none found)
        self.heard_at = now  # monotonic time of its last report: liveness
        self.ping_sent_at: float | None = None  # a ping not answered yet
        self.ping_seq = 0
        self.stopped_checks = 0  # consecutive liveness checks that found it stopped by the OS
        self.hung: str | None = None  # why the supervisor found it hung, once it has
        self.wait_status: int | None = None  # once reaped

    def __repr__(self) -> str:
        return f"<Child {self.spec.worker_id} pid={self.pid} {self.state.value}>"

    @property
    def log_extra(self) -> dict[str, Any]:
        return {"pool": self.spec.pool, "slot": self.spec.slot, "pid": self.pid, "worker_id": self.spec.worker_id}

    def change_state(self, new: ChildState) -> None:
        if new is self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"{self!r}: {self.state.value} -> {new.value} is not allowed")
        self.state = new

    @property
    def up(self) -> bool:
        """Booted and serving (not starting, stopping or gone)."""
        return self.state in (ChildState.IDLE, ChildState.BUSY)

    @property
    def killed(self) -> bool:
        return self.killed_for is not None

    def handle_message(
        self, message: dict[str, Any], now: float, timeout_for: Callable[[str], float | None] = lambda path: None
    ) -> None:
        event = message.get("event")
        self.heard_at = now
        if event in (protocol.TASK_STARTED, protocol.EMPTY, protocol.HELD):
            self.claimed_at = now
        if event == protocol.PONG:
            if message.get("seq") == self.ping_seq:
                self.ping_sent_at = None
        elif event == protocol.READY:
            self.ready_at = now
            if self.state is ChildState.STARTING:  # STARTING -> IDLE: booted
                self.change_state(ChildState.IDLE)
        elif event == protocol.BOOT_FAILED:
            self.boot_error = str(message.get("reason", ""))
        elif event == protocol.TASK_STARTED:
            path = str(message.get("path"))
            self.task = RunningTask(str(message.get("task_id")), path, now, timeout_for(path))
            if self.state is ChildState.IDLE:  # IDLE -> BUSY
                self.change_state(ChildState.BUSY)
        elif event == protocol.TASK_FINISHED:
            self.task = None
            self.tasks_done += 1
            if self.state is ChildState.BUSY:  # BUSY -> IDLE
                self.change_state(ChildState.IDLE)

    def request_stop(self, now: float, grace: float) -> None:
        """Ask for a drain: db_worker finishes its task and exits; SIGKILL after ``grace``."""
        if self.state in (ChildState.STOPPING, ChildState.EXITED):
            return
        self.change_state(ChildState.STOPPING)  # any live state -> STOPPING
        self.stop_requested_at = now
        self.kill_at = now + grace
        self.signal(signal.SIGTERM)

    def tell_timeout(self) -> None:
        """Make TaskTimeout raise inside the running task (soft timeout)."""
        task = self.task
        assert task is not None and task.timeout is not None
        self.timed_out = task
        if control.send_timeout(self.control_fd, task.task_id, task.timeout):
            self.signal(control.TIMEOUT_SIGNAL)

    def claiming(self, now: float) -> bool:
        """Woken and not yet reported its claim (within WAKE_ANSWER: a claim held back by a
        lost lease reports nothing)."""
        return self.woken_at > self.claimed_at and now - self.woken_at < WAKE_ANSWER

    def wake(self, now: float) -> None:
        """Cut its wait between polls short: a task is READY for it."""
        self.woken_at = now
        control.send_wake(self.control_fd)

    def kill(self, why: str) -> None:
        """SIGKILL it; ``why`` goes into the log line of its exit and its lost task's record."""
        if self.killed_for is None:
            self.killed_for = why
        self.signal(signal.SIGKILL)

    def signal(self, signum: int) -> None:
        self.calls.signal(self.pid, signum)

    def exited(self, status: int) -> ExitReason:
        """Record the wait status (any state -> EXITED) and classify the exit."""
        self.wait_status = status
        was_stopping = self.stop_requested_at is not None
        self.change_state(ChildState.EXITED)
        code = os.waitstatus_to_exitcode(status)
        if was_stopping:
            return ExitReason.STOPPED
        if self.ready_at is None or code == CHILD_EXIT_BOOT_FAILED:
            return ExitReason.BOOT_FAILED
        return ExitReason.RECYCLED if code == 0 else ExitReason.CRASHED

    def log_exit(self, reason: ExitReason, how: str) -> None:
        """One record of how it ended: exit_code, or signal and why the supervisor sent it."""
        extra: dict[str, Any] = {**self.log_extra, "event": EXIT_EVENTS[reason], "reason": reason.value}
        if self.wait_status is not None and os.WIFSIGNALED(self.wait_status):
            extra.update(signal=signal.Signals(os.WTERMSIG(self.wait_status)).name, killed_for=self.killed_for)
        elif self.wait_status is not None:
            extra.update(exit_code=os.waitstatus_to_exitcode(self.wait_status))
        wid = self.spec.worker_id
        if reason is ExitReason.STOPPED:
            log.info("Child %s %s after stop", wid, how, extra=extra)
        elif reason is ExitReason.RECYCLED:
            log.info("Child %s recycled after %d tasks", wid, self.tasks_done, extra=extra)
        elif reason is ExitReason.BOOT_FAILED:
            log.error("Child %s failed to boot (%s): %s", wid, how, self.boot_error or "no reason given", extra=extra)
        elif "SIGKILL" in how and not self.killed:
            log.error("Child %s %s", wid, how, extra=extra)
        else:
            log.warning("Child %s %s", wid, how, extra=extra)
