"""A pool: slots that each keep one db_worker child alive, with backoff for crash loops.

Pure bookkeeping: the supervisor spawns and reaps; the pool decides which slot needs a child
and when. Every method that depends on time takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from task_supervisor.config import PoolConfig
from task_supervisor.loop.child import Child, ChildState, ExitReason

BACKOFF_BASE = 0.1  # seconds before the first restart of a child that died fast
BACKOFF_CAP = 15.0  # seconds; short enough to notice a database coming back soon
MIN_UPTIME = 2.0  # seconds; a child that dies sooner counts as a fast failure
GIVE_UP_AFTER = 5  # consecutive boot failures of a never-booted pool before it is hopeless


def restart_delay(failures: int, rng: random.Random) -> float:
    """Seconds to wait before restarting after ``failures`` consecutive fast failures.

    Exponential with "equal jitter": half the delay fixed, half random, so a pool's children
    (and a fleet of pods) do not retry in lockstep.
    """
    if failures <= 0:
        return 0.0
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


def recycle_after(max_tasks: int | None, rng: random.Random) -> int | None:
    """A child's --max-tasks: the pool's, less up to 10% so children do not recycle at once."""
    if max_tasks is None:
        return None
    return max(1, max_tasks - rng.randint(0, max_tasks // 10))


def serves(config: PoolConfig, queue: str) -> bool:
    """Does a pool of this config take tasks of ``queue``? ("*" takes every queue.)"""
    return queue in config.queues or "*" in config.queues


@dataclass
class Slot:
    index: int
    child: Child | None = None
    failures: int = 0  # consecutive fast failures
    start_after: float = 0.0  # monotonic time before which no child is started
    last_error: str = ""


@dataclass
class Pool:
    config: PoolConfig
    slots: dict[int, Slot] = field(default_factory=dict)
    ever_up: bool = False  # a child of this pool has booted at least once
    restarts: int = 0

    def __post_init__(self) -> None:
        self.resize(self.config.processes)

    @property
    def name(self) -> str:
        return self.config.name

    def serves(self, queue: str) -> bool:
        return serves(self.config, queue)

    def resize(self, processes: int) -> list[Child]:
        """Add or remove slots; returns the children of removed slots, for the caller to stop."""
        for index in range(processes):
            self.slots.setdefault(index, Slot(index))
        removed = [self.slots.pop(i) for i in sorted(self.slots) if i >= processes]
        return [slot.child for slot in removed if slot.child is not None]

    def grow(self, count: int) -> None:
        """Add slots, at the lowest free indices, until there are ``count``."""
        index = 0
        while len(self.slots) < count:
            self.slots.setdefault(index, Slot(index))
            index += 1

    def remove_idle_slot(self) -> Child | None:
        """Remove the highest slot whose child is idle; returns that child to stop."""
        for index in sorted(self.slots, reverse=True):
            child = self.slots[index].child
            if child is not None and child.state is ChildState.IDLE:
                del self.slots[index]
                return child
        return None

    def due(self, now: float) -> list[Slot]:
        """Slots with no child whose backoff is over."""
        return [s for s in self.slots.values() if s.child is None and now >= s.start_after]

    def next_start(self) -> float | None:
        waiting = [s.start_after for s in self.slots.values() if s.child is None]
        return min(waiting) if waiting else None

    def children(self) -> list[Child]:
        return [s.child for s in self.slots.values() if s.child is not None]

    def at_strength(self) -> bool:
        return all(s.child is not None and s.child.up for s in self.slots.values())

    def child_exited(self, slot: Slot, child: Child, reason: ExitReason, now: float, rng: random.Random) -> None:
        """Free the slot and decide when it gets its next child."""
        slot.child = None
        if reason is ExitReason.STOPPED:
            slot.start_after = now
            return
        self.restarts += 1
        lived = now - child.started_at
        if child.killed_for_timeout is not None:
            # We killed it for its task's sake; the child itself was healthy.
            slot.failures = 0
        elif reason is ExitReason.BOOT_FAILED or (reason is ExitReason.CRASHED and lived < MIN_UPTIME):
            slot.failures += 1
            slot.last_error = child.boot_error or slot.last_error
        else:
            slot.failures = 0
        slot.start_after = now + restart_delay(slot.failures, rng)

    def hopeless(self) -> bool:
        """No child of this pool ever booted, and every slot keeps failing to boot."""
        return not self.ever_up and all(s.failures >= GIVE_UP_AFTER for s in self.slots.values())

    def backing_off(self, now: float) -> bool:
        return any(s.child is None and s.failures > 0 and s.start_after > now for s in self.slots.values())

    def last_error(self) -> str:
        return next((s.last_error for s in self.slots.values() if s.last_error), "")
