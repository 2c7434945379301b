"""Instant pickup: PostgreSQL notices of READY tasks wake one idle child of a pool that serves the
queue, so a task starts in milliseconds instead of at the next poll; polling stays the fallback.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable, Iterable

from task_supervisor.chores.listen import ReadyListener
from task_supervisor.loop.child import ChildState
from task_supervisor.loop.pool import Pool

Pools = Callable[[], Iterable[Pool]]


class Wakeups:
    def __init__(
        self,
        listeners: list[ReadyListener],
        selector: selectors.BaseSelector,
        pools: Pools,
        clock: Callable[[], float],
    ) -> None:
        self.listeners = listeners
        self.selector = selector
        self.pools = pools
        self.clock = clock

    def next_due(self, now: float) -> float | None:
        moments = []
        for listener in self.listeners:
            if (later := listener.next_due_in()) is not None:
                moments.append(now + later)
            if listener.conn is None:
                moments.append(listener.retry_at)
        return min(moments) if moments else None

    def tick(self, now: float) -> bool:
        """Keep the LISTEN connections up and wake children for tasks whose run_after came; True
        when it tried to connect this turn (a call that may block up to its time box)."""
        connecting = False
        for listener in self.listeners:
            if listener.conn is None and now >= listener.retry_at and not connecting:
                connecting = True
                if listener.connect(now):
                    fd = listener.fileno()
                    assert fd is not None
                    self.selector.register(fd, selectors.EVENT_READ, lambda mask, li=listener, fd=fd: self.read(li, fd))
            for queue in listener.due():
                self.wake_one(queue, now)
        return connecting

    def read(self, listener: ReadyListener, fd: int) -> None:
        """The LISTEN socket is readable: wake a child for each queue notified."""
        for queue in listener.read():
            self.wake_one(queue, self.clock())
        if listener.conn is None:  # the connection was lost while reading
            self.selector.unregister(fd)

    def wake_one(self, queue: str, now: float) -> None:
        """Wake the idle child of a pool serving ``queue`` that was woken least recently."""
        idle = [
            child
            for pool in self.pools()
            if pool.serves(queue)
            for child in pool.children()
            if child.state is ChildState.IDLE
        ]
        if idle:
            min(idle, key=lambda c: c.woken_at).wake(now)

    def fds(self) -> list[int]:
        return [fd for listener in self.listeners if (fd := listener.fileno()) is not None]

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
