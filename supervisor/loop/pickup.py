"""How often idle children poll: the pool's interval, or only ``safety_poll`` while notices of new
tasks are known to arrive, switched back the moment they stop (``Wakeups.instant``).

Also what the fleet needs from the loop: the queues this node serves, for its heartbeat, the
fleet read back with it, and the backlog wake after each READY-depth reading.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable

from task_supervisor import events
from task_supervisor.chores.janitor import Janitor
from task_supervisor.loop.child import Child, ChildState
from task_supervisor.loop.fleet import Member
from task_supervisor.loop.pool import Pool
from task_supervisor.loop.wakeups import BACKLOG_AGE, Wakeups
from task_supervisor.observe.stats import Stats
from task_supervisor.wire import control
from task_supervisor.wire.spec import SCHEDULER

log = logging.getLogger(__name__)

JITTER = 0.25  # each child's safety poll is spread by this fraction either way


class Pickup:
    def __init__(
        self,
        wakeups: Wakeups,
        janitor: Janitor | None,
        stats: Stats,
        safety_poll: float,
        pools: Callable[[], Iterable[Pool]],
        rng: random.Random,
    ) -> None:
        self.wakeups = wakeups
        self.janitor = janitor
        self.stats = stats
        self.safety_poll = safety_poll
        self.pools = pools
        self.rng = rng
        self.instant = False
        self.fleet_seen: object = None
        self.readings_seen = 0
        if janitor is not None:
            janitor.queues = self.queues

    def tick(self, now: float, children: Iterable[Child], held: Iterable[str]) -> None:
        """After the turn's chores: follow the fleet, wake children for a forgotten backlog, and
        tell the children how to poll when that changed."""
        janitor = self.janitor
        if janitor is not None and janitor.fleet is not None and janitor.fleet is not self.fleet_seen:
            self.fleet_seen = janitor.fleet
            self.wakeups.fleet.update(Member(node, tuple(queues)) for node, queues in janitor.fleet)
        instant = self.safety_poll > 0 and self.wakeups.instant(now)
        if janitor is not None and janitor.depth_readings != self.readings_seen:
            self.readings_seen = janitor.depth_readings
            if instant:
                self.wakeups.backlog(self.forgotten(), [*self.stats.paused_queues, *held], now)
        if instant != self.instant:
            self.instant = instant
            self.switched(now, list(children))

    def forgotten(self) -> dict[str, int]:
        """READY tasks per queue, for queues whose oldest READY task waited past BACKLOG_AGE."""
        ages = self.stats.oldest_ready_age
        return {q: n for q, n in self.stats.queue_depth.items() if ages.get(q, 0.0) >= BACKLOG_AGE}

    def switched(self, now: float, children: list[Child]) -> None:
        if self.instant:
            log.info(
                "Notices of new tasks arrive: idle children poll every %gs only",
                self.safety_poll,
                extra={"event": events.PICKUP_INSTANT},
            )
        else:
            log.warning(
                "Notices of new tasks do not arrive: idle children poll at their pool's interval",
                extra={"event": events.PICKUP_POLLING},
            )
        for child in children:
            if self.tell(child) and not self.instant and child.state is ChildState.IDLE:
                child.wake(now)  # a notice may have been missed before the loss was seen

    def tell(self, child: Child) -> bool:
        """Send ``child`` its poll (at READY, and at each switch); False for the scheduler."""
        if child.spec.role == SCHEDULER or child.state not in (ChildState.IDLE, ChildState.BUSY):
            return False
        seconds = self.safety_poll * self.rng.uniform(1 - JITTER, 1 + JITTER) if self.instant else None
        control.send_poll(child.control_fd, seconds)
        return True

    def queues(self) -> list[str]:
        """The queues this node's pools serve, told with its heartbeat."""
        return sorted({queue for pool in self.pools() for queue in pool.config.queues})
