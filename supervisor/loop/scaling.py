"""Autoscaling a pool between its min and max on the READY depth of its queues. ``decide`` is pure:
time is a parameter.

Grow: when tasks wait that the idle children cannot take, to busy + waiting (at most max), at
most once per UP_COOLDOWN. Shrink: one idle child at a time, when nothing waits, and only after
``cooldown`` since the last change either way, so a bursty queue does not make the pool flap.
Never below min or above max; only idle children are ever stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from task_supervisor.loop.child import Child, ChildState
from task_supervisor.loop.pool import Pool

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
    """Applies ``decide`` to the autoscaled pools, one step per turn, and remembers when each
    last changed. Returns the children to stop; the loop stops them."""

    def __init__(self) -> None:
        self.states: dict[str, ScaleState] = {}

    def step(self, pool: Pool, depth: int, now: float) -> tuple[str, int, Child | None] | None:
        """(direction, previous size, child to stop or None) when the pool changed size, else None."""
        config = pool.config
        children = pool.children()
        busy = sum(1 for c in children if c.state is ChildState.BUSY)
        idle = sum(1 for c in children if c.state is ChildState.IDLE)
        current = len(pool.slots)
        state = self.states.setdefault(pool.name, ScaleState())
        want = decide(
            now, current, config.processes, config.max_processes, busy, idle, depth, state, config.scale_cooldown
        )
        if want > current:
            pool.grow(want)
            state.last_up = now
            return "up", current, None
        if want < current and (child := pool.remove_idle_slot()) is not None:
            state.last_down = now
            return "down", current, child
        return None
