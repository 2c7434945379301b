"""Autoscaling a pool between its min and max on the READY depth of its queues. ``decide`` is pure:
time is a parameter.

Grow: when tasks wait that the idle children cannot take, to busy + waiting (at most max), at
most once per UP_COOLDOWN. Shrink: one idle child at a time, when nothing waits, and only after
``cooldown`` since the last change either way, so a bursty queue does not make the pool flap.
Never below min or above max; only idle children are ever stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from task_supervisor import events
from task_supervisor.loop.child import Child, ChildState
from task_supervisor.loop.pool import Pool
from task_supervisor.observe.stats import Stats

log = logging.getLogger("task_supervisor.loop.arbiter")

UP_COOLDOWN = 2.0  # seconds between two growth steps: the depth is re-measured in between


@dataclass
class ScaleState:
    last_up: float = -math.inf
    last_down: float = -math.inf


def decide(
    now: float,
    current: int,
    minimum: int,
    maximum: int,
    busy: int,
    idle: int,
    depth: int,
    state: ScaleState,
    cooldown: float,
) -> int:
    """The pool's new size."""
    if current < minimum:
        return minimum
    if current > maximum:
        return maximum
    waiting = depth - idle
    if waiting > 0 and current < maximum and now - state.last_up >= UP_COOLDOWN:
        return min(maximum, max(current + 1, busy + depth))
    last_change = max(state.last_up, state.last_down)
    if depth == 0 and idle > 0 and current > minimum and now - last_change >= cooldown:
        return current - 1
    return current


class Autoscaler:
    """Applies ``decide`` to an autoscaled pool, one step per turn, remembering when each pool
    last changed; logs and counts each change. The loop stops the child it returns."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.states: dict[str, ScaleState] = {}

    def scale(self, pool: Pool, depth: int, now: float) -> Child | None:
        """Grow or shrink ``pool`` for ``depth`` READY tasks; returns an idle child to stop."""
        config, children = pool.config, pool.children()
        busy = sum(1 for c in children if c.state is ChildState.BUSY)
        idle = sum(1 for c in children if c.state is ChildState.IDLE)
        before = len(pool.slots)
        state = self.states.setdefault(pool.name, ScaleState())
        want = decide(
            now, before, config.processes, config.max_processes, busy, idle, depth, state, config.scale_cooldown
        )
        stopped = None
        if want > before:
            pool.grow(want)
            state.last_up = now
        elif want < before and (stopped := pool.remove_idle_slot()) is not None:
            state.last_down = now
        else:
            return None
        direction, after = ("up" if want > before else "down"), len(pool.slots)
        self.stats.scale_events[(pool.name, direction)] += 1
        log.info(
            "Pool %s scaled %s from %d to %d (READY depth %d, busy %d, idle %d)",
            pool.name,
            direction,
            before,
            after,
            depth,
            busy,
            idle,
            extra={"event": events.POOL_SCALED, "pool": pool.name, "direction": direction, "processes": after},
        )
        return stopped
