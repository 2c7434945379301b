"""The operating-system calls the loop makes about its children, in one object tests replace.

Forking lives in ``spawn.Spawner``; everything else the loop asks the OS about a child (has it
exited, signal it, how much memory and CPU it uses, wait a little) goes through here.
"""

from __future__ import annotations

import os
import time

import psutil


class ProcessCalls:
    def __init__(self) -> None:
        # One psutil handle per child: cpu_percent measures since the previous call on the same handle.
        self._handles: dict[int, psutil.Process] = {}

    def reap(self) -> tuple[int, int] | None:
        """(pid, wait status) of any exited child, ours or an orphan; None if none has exited."""
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        return None if pid == 0 else (pid, status)

    def signal(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # already exited; the reaper will see it

    def usage(self, pid: int) -> tuple[int | None, float | None]:
        """(RSS in bytes, CPU percent since the last call), or Nones if it cannot be read."""
        try:
            handle = self._handles.get(pid) or self._handles.setdefault(pid, psutil.Process(pid))
            return handle.memory_info().rss, handle.cpu_percent(interval=None)
        except psutil.Error:
            return None, None

    def state(self, pid: int) -> str | None:
        """The OS state (psutil.STATUS_*: running, sleeping, stopped ...), or None if unreadable."""
        try:
            handle = self._handles.get(pid) or self._handles.setdefault(pid, psutil.Process(pid))
            return handle.status()
        except psutil.Error:
            return None

    def forget(self, pid: int) -> None:
        self._handles.pop(pid, None)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
