"""A time box for the few blocking calls the supervisor's loop makes: its database chores.

Server-side limits (statement, lock and metadata-lock timeouts: recovery.bounded) end a query the
server works on, but not a connection that stopped answering (a stalled network, a frozen proxy, a
host gone without a reset): the client would wait on its socket for as long as TCP lets it. At
the deadline the time box cuts the connections instead: their sockets are shut down, so the
blocked call and the rollback after it fail at once; the block ends with TimeboxExceeded, the
connections are closed, and the chores are retried with backoff on a fresh connection. /livez
keeps answering, /readyz says why.

Two hands do this, because drivers wait in two ways:

- A watchdog thread shuts the sockets down at the deadline. mysqlclient waits inside C and, when a
  signal interrupts its read, simply reads again: no Python code runs until the server answers,
  so only a socket shut down from another thread ends that wait (mysqlclient releases the GIL
  while it waits). The thread starts when the block first uses a connection with a socket (its
  first statement, or ``watch`` before a transaction begins), so a turn of chores with nothing to
  do costs no thread (starting one costs a few hundred microseconds, and the loop turns on every
  report of a child), and it is joined before the box is left: the loop forks children and
  refuses to while another thread lives.
- A connection opened inside the box, first or again (Django reconnects to restore autocommit
  after a rollback failed on a cut connection), has no socket to cut until it is open, and
  mysqlclient opens it inside C: its own ``connect_timeout`` (which bounds the handshake too) is
  the only limit. The box lends it to the MySQL connections it watches: the seconds of the box,
  and 1 s (the least) once the box has expired. The settings are the children's too (they are
  forked later, never inside a box): the value is lent, not left.
- SIGALRM raises TimeboxExceeded in the loop's own thread. That ends a wait that runs Python code
  or checks for signals (psycopg's waits do both) where no socket can be cut yet: opening a
  connection, for instance. With mysqlclient its handler runs late, whenever the C call returns,
  possibly between two calls that belong together (a query and the read of its result), which
  leaves that connection out of sync; so after any expiry the box closes the connections it
  watched, and Django opens fresh ones for the next chores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

REPEAT = 0.25  # seconds between further alarms and cuts once the deadline has passed

_current: _Box | None = None  # the innermost time box open in the main thread


class TimeboxExceeded(Exception):
    """A blocking call on the loop outlived its deadline; its connection was cut."""


@contextlib.contextmanager
def timebox(seconds: float, what: str, aliases: Iterable[str] = ()) -> Iterator[None]:
    """Raise TimeboxExceeded inside the block if it runs past ``seconds``, cutting the block's
    connections among the Django database ``aliases`` (of this thread) at that moment."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    box = _Box(f"{what} did not finish within {seconds:g}s (database not answering?)", time.monotonic() + seconds)

    def expire(signum: int, frame: Any) -> None:
        if not box.inside:
            return  # an alarm already on its way when the block was left: nothing to end
        box.cut()
        raise TimeboxExceeded(box.message)

    global _current
    outer, _current = _current, box
    previous = signal.signal(signal.SIGALRM, expire)
    # Repeating: cleanup after the first expiry (a rollback, Django reconnecting to restore
    # autocommit) may block again, and is cut again until the block is left.
    began = time.monotonic()
    outer_timer = signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT)
    try:
        with box.watching(aliases, seconds):
            yield
    except TimeboxExceeded:
        raise
    except Exception as exc:
        if box.expired:  # the driver's error for a connection cut under it
            raise TimeboxExceeded(box.message) from exc
        raise
    finally:
        box.inside = False  # first, so an alarm landing in here raises nothing
        _current = outer
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_timer[0] > 0:  # someone else's alarm (a test runner's): it goes on, a little late at worst
            signal.setitimer(signal.ITIMER_REAL, max(outer_timer[0] - (time.monotonic() - began), 1e-3), outer_timer[1])
        box.stop()
        if box.expired:
            close_connections(aliases)


def watch(connection: Any) -> None:
    """Let the time box open in this thread, if any, cut this Django connection from now on.

    Statements are noticed by themselves; call this before a transaction begins, whose first
    round trip (mysqlclient's ``autocommit(False)``) is no statement.
    """
    box = _current
    if box is not None and threading.current_thread() is threading.main_thread():
        box.watch(connection.connection)


class _Box:
    """One time box's state: the sockets its block used, the watchdog, whether it expired."""

    def __init__(self, message: str, deadline: float) -> None:
        self.message = message
        self.deadline = deadline  # time.monotonic()
        self.inside = True
        self.expired = False
        self.sockets: dict[int, socket.socket] = {}  # id of the driver's connection -> a dup of its socket
        self.watchdog: _Watchdog | None = None
        self.lent: list[dict[str, Any]] = []  # OPTIONS of MySQL connections, connect_timeout lent

    @contextlib.contextmanager
    def watching(self, aliases: Iterable[str], seconds: float) -> Iterator[None]:
        from django.db import connections

        with contextlib.ExitStack() as stack:
            for alias in sorted(set(aliases)):
                wrapper = connections[alias]
                stack.enter_context(wrapper.execute_wrapper(self.statement))
                if wrapper.vendor == "mysql":
                    stack.enter_context(self.lend_connect_timeout(wrapper.settings_dict, seconds))
            yield

    @contextlib.contextmanager
    def lend_connect_timeout(self, settings: dict[str, Any], seconds: float) -> Iterator[None]:
        options = settings.setdefault("OPTIONS", {})
        missing = "connect_timeout" not in options
        before = options.get("connect_timeout")
        options["connect_timeout"] = min(int(before or seconds), max(1, int(seconds)))  # whole seconds, 0 is none
        self.lent.append(options)
        try:
            yield
        finally:
            self.lent.remove(options)
            if missing:
                options.pop("connect_timeout", None)
            else:
                options["connect_timeout"] = before

    def statement(self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any) -> Any:
        """Django's execute wrapper: note the connection's socket before each statement runs."""
        self.watch(context["connection"].connection)
        return execute(sql, params, many, context)

    def watch(self, raw: Any) -> None:
        if not self.inside or raw is None or id(raw) in self.sockets:
            return
        fileno = getattr(raw, "fileno", None)
        if fileno is None:
            return  # SQLite: no socket, and its waits end by themselves (busy_timeout)
        try:
            # A duplicate, so the watchdog shuts down this very socket even if the driver closes
            # its descriptor meanwhile and the number is given to another file; and so the thread
            # never calls into the driver, whose connection only this thread may touch.
            self.sockets[id(raw)] = socket.socket(fileno=os.dup(fileno()))
        except (OSError, ValueError, AttributeError, TypeError):
            return
        if self.watchdog is None:
            self.watchdog = _Watchdog(self)
            self.watchdog.start()

    def cut(self) -> None:
        """Shut down every socket the block used (from any thread); connect again only briefly."""
        self.expired = True
        for options in list(self.lent):
            options["connect_timeout"] = 1
        for sock in list(self.sockets.values()):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.done.set()
            self.watchdog.join()
        for sock in self.sockets.values():
            sock.close()


class _Watchdog(threading.Thread):
    """Cuts the box's sockets at its deadline, then every REPEAT seconds until the box is left."""

    def __init__(self, box: _Box) -> None:
        super().__init__(name="timebox-watchdog", daemon=True)
        self.box = box
        self.done = threading.Event()

    def run(self) -> None:
        # The alarm is the loop thread's to take: delivered here, it would not interrupt that
        # thread's wait (the kernel picks any thread that does not block a process signal).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        wait = self.box.deadline - time.monotonic()
        while not self.done.wait(max(0.0, wait)):
            self.box.cut()
            wait = REPEAT


def close_connections(aliases: Iterable[str]) -> None:
    """Close these Django connections of this thread: after a cut none may be used again (a
    mysqlclient connection interrupted between a query and its result is out of sync)."""
    from django.db import connections

    for alias in set(aliases):
        with contextlib.suppress(Exception):
            connections[alias].close()
