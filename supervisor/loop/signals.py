"""Signal handlers that only record the signal and wake the loop; the loop does the work."""

from __future__ import annotations

import collections
import signal
import socket

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)


class SignalQueue:
    """Signals received since the loop last looked, and a socket that wakes its selector."""

    def __init__(self) -> None:
        self.pending: collections.deque[int] = collections.deque()
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        # The C-level handler writes to the socket even while the loop sits in select().
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def pop_all(self) -> list[int]:
        signals = []
        while self.pending:
            signals.append(self.pending.popleft())
        return signals

    def uninstall(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]

    def close(self) -> None:
        self.wake_r.close()
        self.wake_w.close()

    def fds(self) -> list[int]:
        return [self.wake_r.fileno(), self.wake_w.fileno()]


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
