"""Children waiting on limits: woken when something they hold back may have become eligible.

A child whose claim found only rows its limits hold back reports ``held`` and sleeps its pool's
interval. Rather than let it poll, the loop wakes one idle child of the queue (``Wakeups.wake_one``)
when a task of a path it waits for finishes here (a slot may be free), or when a rate allows the
next start (``due``, on the database's clock, read against this machine's). On PostgreSQL the
finishing child also announces it to every node (``worker/flow.py``); elsewhere the other nodes'
children find a slot freed here at their next poll.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MIN_REWAKE = 0.05  # seconds: a due already past (clocks apart) is retried no sooner than this
RESCAN = 0.05  # seconds: a claim that left rows unread looks again this soon
# Seconds a queue counts as waiting for slots of a path after a child last found them all taken:
# the child woken by a finish claims and says nothing more, while the others, still sleeping,
# report again at their next poll (every pool's interval is far shorter).
WAITING_TTL = 120.0


class FlowWakes:
    def __init__(self, wake_one: Callable[[str, float], None]) -> None:
        self.wake_one = wake_one
        self.waiting: dict[str, dict[str, float]] = {}  # queue -> {limited path its children wait for: until}
        self.due: dict[str, float] = {}  # queue -> monotonic moment to wake one of its children

    def on_held(self, message: dict[str, Any], now: float, wall: float) -> None:
        queues = [str(q) for q in message.get("queues") or []]
        paths = {str(p) for p in message.get("paths") or []}
        if message.get("waiting"):
            for queue in queues:
                self.waiting.setdefault(queue, {}).update(dict.fromkeys(paths, now + WAITING_TTL))
        due = message.get("due")
        later = RESCAN if message.get("more") else None
        if isinstance(due, int | float):
            later = min(later, due - wall) if later is not None else due - wall
        if later is not None:
            moment = now + max(MIN_REWAKE, later)
            for queue in queues:
                self.due[queue] = min(self.due.get(queue, moment), moment)

    def on_finished(self, path: str, now: float) -> None:
        """A task finished here: wake a child of each queue waiting for a slot of its path."""
        for queue, paths in list(self.waiting.items()):
            until = paths.get(path)
            if until is not None and until < now:
                del paths[path]
                if not paths:
                    del self.waiting[queue]
            elif until is not None:
                self.wake_one(queue, now)

    def next_due(self) -> float | None:
        return min(self.due.values()) if self.due else None

    def tick(self, now: float) -> None:
        for queue, moment in list(self.due.items()):
            if moment <= now:
                del self.due[queue]
                self.wake_one(queue, now)
