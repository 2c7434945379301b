"""The child's end of the control pipe (format in ``task_supervisor.wire.control``): reads the
supervisor's lines, raises TaskTimeout in the running task, and sleeps interruptibly.
"""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Any

from task_supervisor.exceptions import TaskTimeout
from task_supervisor.wire.control import TIMEOUT_SIGNAL


class CurrentTask:
    """The task this child runs right now, as the framework's signals tell it."""

    task_id: str | None = None
    path: str = ""


class ControlChannel:
    """Child side: reads the pipe, raises timeouts, and sleeps interruptibly."""

    def __init__(self, fd: int, current: CurrentTask) -> None:
        self.fd = fd
        self.current = current
        self.pending = bytearray()
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

    def _handle(self, lines: list[str]) -> bool:
        """Raise TaskTimeout if one names the running task; True if there was a wake."""
        woken = False
        for line in lines:
            if line == "wake":
                woken = True
            elif line.startswith("timeout "):
                _, task_id, seconds = line.split(" ", 2)
                # A late notice for a task that already finished is ignored.
                if task_id == self.current.task_id:
                    raise TaskTimeout(f"Task {self.current.path} ran past its timeout of {seconds}s.")
        return woken

    def on_timeout_signal(self, signum: int, frame: Any) -> None:
        self._handle(self._lines())

    def sleep(self, seconds: float) -> None:
        """db_worker's wait between polls, cut short by a wake."""
        deadline = time.monotonic() + seconds
        if self._handle(self._lines()):
            return
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready and self._handle(self._lines()):
                return
            if ready and not self.pending and _closed(self.fd):
                time.sleep(max(0.0, deadline - time.monotonic()))  # supervisor gone: plain sleep
                return

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
