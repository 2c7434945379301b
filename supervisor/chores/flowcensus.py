"""The limits' census on the supervisor's loop: what each key holds back, for status and metrics,
and the tidying of rows nothing counts any more (``flowinfo``), every CENSUS_INTERVAL."""

from __future__ import annotations

from collections.abc import Callable

from task_supervisor import flowinfo
from task_supervisor.chores import recovery
from task_supervisor.compat import TaskBackend
from task_supervisor.observe.stats import Stats
from task_supervisor.wire.limits import FlowLimit

CENSUS_INTERVAL = 5.0  # seconds between censuses while limits are declared


class FlowCensus:
    def __init__(self, clock: Callable[[], float], stats: Stats) -> None:
        self.clock = clock
        self.stats = stats
        self.next_at = 0.0

    def next_due(self, limits: dict[str, FlowLimit]) -> float | None:
        return self.next_at if limits else None

    def tick(self, now: float, backends: list[TaskBackend], limits: dict[str, FlowLimit]) -> None:
        if not limits or now < self.next_at:
            if not limits:
                self.stats.flow = []
            return
        self.next_at = now + CENSUS_INTERVAL
        found = []
        for backend in backends:
            with recovery.bounded(backend):
                found += [c.as_dict() for c in flowinfo.census(backend, limits.values())]
                flowinfo.tidy(backend, limits)
        self.stats.flow = found
