"""Autoscaling a pool between its min and max on the READY depth of its queues. Pure: time is
a parameter.

Grow: when tasks wait that the idle children cannot take, to busy + waiting (at most max), at
most once per UP_COOLDOWN. Shrink: one idle child at a time, when nothing waits, and only after
``cooldown`` since the last change either way, so a bursty queue does not make the pool flap.
Never below min or above max; only idle children are ever stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
