"""This node's lease on its RUNNING rows, as the loop keeps it (monotonic seconds).

Each heartbeat that succeeds renews the lease until node_timeout after the moment it was sent:
the database stamps the heartbeat no earlier than that, and other nodes recover this node's rows
only once the stamp is node_timeout old by the database's clock, so the lease never outlasts the
rows' safety. LEASE_MARGIN before it ends, running tasks get LeaseExpired (a ``lease-lost`` line
with SIGUSR1) and children claim nothing; LEASE_GRACE later the children still running a task
are killed. Children hold the same lease (``lease`` lines), so they stop their task by themselves
when the supervisor cannot (frozen): see ``task_supervisor.worker.control``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from task_supervisor import events
from task_supervisor.loop.child import Child, ChildState
from task_supervisor.wire import control

log = logging.getLogger("task_supervisor.loop.arbiter")

# The loop may be held this long by one blocking database call (chores.janitor.CHORES_TIMEBOX),
# and needs a turn to reap: the margin left after the grace must cover both.
LOOP_HOLD = 2.5  # seconds
assert control.LEASE_MARGIN - control.LEASE_GRACE >= LOOP_HOLD + 0.5


class Lease:
    def __init__(self, node_timeout: float, enabled: bool) -> None:
        self.node_timeout = node_timeout
        self.enabled = enabled  # False without heartbeats: nothing to hold, nothing to lose
        self.until: float | None = None  # None: not held yet
        self.lost = False  # the loss was announced; renewals after it are logged
        self.noticed: set[int] = set()  # pids told lease-lost since the loss
        self.losses = 0

    def renewed(self, sent_at: float) -> None:
        self.until = sent_at + self.node_timeout
        if self.lost:
            log.warning("Lease renewed: tasks run again", extra={"event": events.LEASE_RENEWED})
        self.lost = False
        self.noticed.clear()

    def holds(self, now: float) -> bool:
        return not self.enabled or (self.until is not None and now < self.until - control.LEASE_MARGIN)

    def remaining(self, now: float) -> float | None:
        """Seconds until running tasks are stopped, or None when there is no lease to keep."""
        if not self.enabled:
            return None
        return max(0.0, (self.until or now) - control.LEASE_MARGIN - now)

    def next_due(self, now: float) -> float | None:
        if not self.enabled or self.until is None:
            return None
        notice = self.until - control.LEASE_MARGIN
        return notice if now < notice else notice + control.LEASE_GRACE

    def enforce(self, now: float, children: Iterable[Child]) -> None:
        """Stop the running tasks of a lease that was not renewed in time."""
        if self.holds(now) or self.until is None:
            return
        busy = [c for c in children if c.state is ChildState.BUSY or (c.task is not None and not c.killed)]
        if not self.lost:
            self.lost, self.losses = True, self.losses + 1
            log.error(
                "Lease not renewed (database unreachable?): stopping %d running tasks before another node "
                "may recover them",
                len(busy),
                extra={"event": events.LEASE_LOST},
            )
        for child in busy:
            if child.pid not in self.noticed:
                self.noticed.add(child.pid)
                if control.send_lease_lost(child.control_fd):
                    child.signal(control.TIMEOUT_SIGNAL)
            elif now >= self.until - control.LEASE_MARGIN + control.LEASE_GRACE and not child.killed:
                child.kill("its node's lease ran out and its task did not stop")

    def hand_down(self, children: Iterable[Child]) -> None:
        """Tell every child how long the lease holds (after a renewal, or to a new child)."""
        if self.enabled and self.until is not None:
            for child in children:
                control.send_lease(child.control_fd, self.until)
