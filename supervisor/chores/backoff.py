"""Doubling waits between tries of a call that keeps failing (a database down, a LISTEN refused)."""

from __future__ import annotations


class Backoff:
    def __init__(self, first: float, cap: float) -> None:
        self.first = first  # seconds before the first retry
        self.cap = cap  # seconds at most
        self.delay = first

    def failed(self) -> float:
        """Seconds to wait before the next try; the wait after that is twice as long, up to the cap."""
        delay = self.delay
        self.delay = min(self.cap, delay * 2)
        return delay

    def succeeded(self) -> None:
        self.delay = self.first
