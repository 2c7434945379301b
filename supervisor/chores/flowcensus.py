"""The limits' census on the supervisor's loop: what each key holds back, for status and metrics
(every CENSUS_INTERVAL while limits are declared), and the tidying of FlowKey and UniqueTask rows
nothing counts any more (``flowinfo.tidy``, every TIDY_INTERVAL whether limits are declared or not)."""

from __future__ import annotations

from collections.abc import Callable

from task_supervisor import flowinfo
from task_supervisor.chores import recovery
from task_supervisor.compat import TaskBackend
from task_supervisor.observe.stats import Stats
from task_supervisor.wire.limits import FlowLimit

CENSUS_INTERVAL = 5.0  # seconds between censuses while limits are declared
TIDY_INTERVAL = 60.0  # seconds between tidyings of idle key rows and unique keys out of scope


class FlowCensus:
    def __init__(self, clock: Callable[[], float], stats: Stats) -> None:
        self.clock = clock
        self.stats = stats
        self.next_census = 0.0
        self.next_tidy = 0.0

    def next_due(self, limits: dict[str, FlowLimit]) -> float:
        return min(self.next_census, self.next_tidy) if limits else self.next_tidy

    def tick(self, now: float, backends: list[TaskBackend], limits: dict[str, FlowLimit]) -> None:
        if not limits:
            self.stats.flow = []
        elif now >= self.next_census:
            self.next_census = now + CENSUS_INTERVAL
            found = []
            for backend in backends:
                with recovery.bounded(backend):
                    found += [c.as_dict() for c in flowinfo.census(backend, limits.values())]
            self.stats.flow = found
        if now >= self.next_tidy:
            self.next_tidy = now + TIDY_INTERVAL
            for backend in backends:
                with recovery.bounded(backend):
                    flowinfo.tidy(backend, limits)
