"""Instant pickup: PostgreSQL notices of READY tasks wake one idle child, on one node, so a task
starts in milliseconds and idle children need not poll.

While notices are known to arrive (``instant``: every listener's probe came back), idle children
poll only every ``safety_poll`` seconds; the moment that stops being true they are told to poll
at their pool's interval again, and woken once, for the notices that may have been missed.

Which node wakes a child for a task is decided by ``loop/fleet.py`` (one node per task, passed on
when it has no idle child); notices without a task id (a queue resumed, a limited slot freed)
wake one idle child on every node. Tasks that no notice brought to a child (every node asked was
busy, a node died with notices in flight) are found by the backlog wake, from the READY depth
the janitor reads every couple of seconds.
"""

from __future__ import annotations

import collections
import selectors
from collections.abc import Callable, Iterable

from task_supervisor.chores.listen import Notice, ReadyListener
from task_supervisor.loop.child import ChildState
from task_supervisor.loop.fleet import Fleet
from task_supervisor.loop.pool import Pool

Pools = Callable[[], Iterable[Pool]]
BACKLOG_AGE = 0.5  # seconds a READY task waits before the backlog wake counts it as forgotten
# Notices passed on per second at most (a token bucket of as many): a pass helps a lone task
# whose owner is busy while others idle; in a burst every node has its own share of notices,
# and each pass would be a transaction for nothing.
PASSES_PER_SECOND = 5.0


class Wakeups:
    def __init__(
        self,
        listeners: list[ReadyListener],
        selector: selectors.BaseSelector,
        pools: Pools,
        clock: Callable[[], float],
        fleet: Fleet | None = None,
    ) -> None:
        self.listeners = listeners
        self.selector = selector
        self.pools = pools
        self.clock = clock
        self.fleet = fleet or Fleet("")
        # how -> wakes sent: "notice" (this node took it), "pass" (passed on to us), "all" (a
        # notice for every node), "backlog"; and "passed" (notices this node passed on)
        self.counts: collections.Counter[str] = collections.Counter()
        self.epoch = 0  # backlog readings so far
        self.registered: dict[ReadyListener, int] = {}  # the LISTEN sockets in the selector
        self.passes = PASSES_PER_SECOND  # tokens left
        self.passes_at = 0.0

    def instant(self, now: float) -> bool:
        """Do notices of new tasks reach this node, for every database it listens to?"""
        return bool(self.listeners) and all(listener.confirmed(now) for listener in self.listeners)

    def next_due(self, now: float) -> float | None:
        moments = []
        for listener in self.listeners:
            if (later := listener.next_due_in()) is not None:
                moments.append(now + later)
            if listener.conn is None:
                moments.append(listener.retry_at)
            elif (probe := listener.next_probe_due()) is not None:
                moments.append(probe)
        return min(moments) if moments else None

    def tick(self, now: float) -> bool:
        """Keep the LISTEN connections up and probed, and wake children for tasks whose run_after
        came; True when it made a call that may block (up to its time box) this turn."""
        blocked = False
        for listener in self.listeners:
            if listener.conn is None and now >= listener.retry_at and not blocked:
                blocked = True
                if listener.connect(now):
                    fd = listener.fileno()
                    assert fd is not None
                    self.registered[listener] = fd
                    self.selector.register(fd, selectors.EVENT_READ, lambda mask, li=listener: self.read(li))
            elif not blocked:
                blocked = listener.probe(now)
            listener.warn_if_deaf(now)
            for notice in listener.due():
                self.route(listener, notice, now)
            self.forget_if_lost(listener)
        return blocked

    def read(self, listener: ReadyListener) -> None:
        """The LISTEN socket is readable: act on each notice."""
        for notice in listener.read():
            self.route(listener, notice, self.clock())
        self.forget_if_lost(listener)

    def forget_if_lost(self, listener: ReadyListener) -> None:
        """Stop watching the socket of a connection lost while reading or passing a notice on."""
        if listener.conn is None and (fd := self.registered.pop(listener, None)) is not None:
            self.selector.unregister(fd)

    def route(self, listener: ReadyListener, notice: Notice, now: float) -> None:
        if notice.task_id is None:
            if self.wake_one(notice.queue, now):
                self.counts["all"] += 1
            return
        if not self.fleet.takes(notice.queue, notice.task_id, notice.hop):
            return
        how = "pass" if notice.hop else "notice"
        # A child woken a moment ago and still claiming is not idle for this task: rather the
        # next node, and only when there is none the child that will claim again after its task.
        if self.wake_one(notice.queue, now, fresh_only=True):
            self.counts[how] += 1
        elif (
            self.fleet.may_pass(notice.queue, notice.task_id, notice.hop)
            and self.take_pass(now)
            and listener.send(notice.passed())
        ):
            self.counts["passed"] += 1
        elif self.wake_one(notice.queue, now):
            self.counts[how] += 1

    def take_pass(self, now: float) -> bool:
        self.passes = min(PASSES_PER_SECOND, self.passes + (now - self.passes_at) * PASSES_PER_SECOND)
        self.passes_at = now
        if self.passes < 1.0:
            return False
        self.passes -= 1.0
        return True

    def backlog(self, depths: dict[str, int], skip: Iterable[str], now: float) -> None:
        """READY tasks that waited past BACKLOG_AGE (``depths``, per queue) were brought to no
        child: wake this node's share of idle children for them."""
        self.epoch += 1
        skipped = set(skip)
        for queue, depth in depths.items():
            if depth > 0 and queue not in skipped:
                for _ in range(self.fleet.backlog_share(queue, depth, self.epoch)):
                    if not self.wake_one(queue, now, fresh_only=True):
                        break
                    self.counts["backlog"] += 1

    def wake_one(self, queue: str, now: float, fresh_only: bool = False) -> bool:
        """Wake the idle child of a pool serving ``queue`` that was woken least recently; False
        if there is none (with ``fresh_only``, none that is not still answering a wake)."""
        idle = [
            child
            for pool in self.pools()
            if pool.serves(queue)
            for child in pool.children()
            if child.state is ChildState.IDLE and not (fresh_only and child.claiming(now))
        ]
        if not idle:
            return False
        min(idle, key=lambda c: c.woken_at).wake(now)
        return True

    def fds(self) -> list[int]:
        return [fd for listener in self.listeners if (fd := listener.fileno()) is not None]

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
