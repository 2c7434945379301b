"""A time box for the few blocking calls the supervisor's loop makes: its database chores.

A statement timeout bounds a query the server works on, but not a connection that stopped
answering (a stalled network, a frozen proxy, a host gone without a reset): the client would wait
on its socket for as long as TCP lets it. Here SIGALRM ends the wait instead: the connections'
sockets are shut down, so the blocked call and the rollback after it fail at once, and the
chores are retried with backoff on a fresh connection; /livez keeps answering, /readyz says why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

REPEAT = 0.25  # seconds between further alarms once the deadline has passed


class TimeboxExceeded(Exception):
    """A blocking call on the loop outlived its deadline; its connection was cut."""


@contextlib.contextmanager
def timebox(seconds: float, what: str, cut: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Run ``cut`` and raise TimeboxExceeded inside the block if it runs past ``seconds``."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    inside = [True]

    def expire(signum: int, frame: Any) -> None:
        if not inside[0]:
            return  # an alarm already on its way when the block was left: nothing to end
        cut()
        raise TimeboxExceeded(f"{what} did not finish within {seconds:g}s (database not answering?)")

    previous = signal.signal(signal.SIGALRM, expire)
    # Repeating: cleanup after the first expiry (a rollback, Django reconnecting to restore
    # autocommit) may block again, and is cut again until the block is left.
    signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT)
    try:
        yield
    finally:
        inside[0] = False  # first, so an alarm landing in here raises nothing
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cut_connections(aliases: Iterable[str]) -> None:
    """Shut down the sockets of these Django database connections (a ``cut`` for timebox)."""
    from django.db import connections

    for alias in aliases:
        raw = getattr(connections[alias], "connection", None)
        fileno = getattr(raw, "fileno", None)
        if fileno is None:
            continue  # not connected, or SQLite: nothing to wait on
        with contextlib.suppress(Exception):
            shut_down(fileno())


def shut_down(fd: int) -> None:
    """Shut a socket down for both directions; a wait on it returns at once (EOF)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
