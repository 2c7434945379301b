"""The scheduler child as the loop sees it: a one-slot pool that runs while [scheduler] is enabled
and settings declare periodic tasks, and what it reported about each schedule."""

from __future__ import annotations

from typing import Any

from task_supervisor.config import PoolConfig
from task_supervisor.loop.child import Child
from task_supervisor.loop.pool import Pool
from task_supervisor.observe.stats import Stats
from task_supervisor.wire import protocol
from task_supervisor.wire.spec import SCHEDULER


class SchedulerUnit:
    def __init__(self, schedules: int, stats: Stats) -> None:
        self.schedules = schedules  # enabled schedules in settings.PERIODIC_TASKS
        self.stats = stats
        self.pool: Pool | None = None  # the scheduler child's one-slot pool, while it runs
        self.info: dict[str, dict[str, Any]] = {}  # schedule -> last slot, lag, next, as reported

    def set(self, enabled: bool) -> list[Child]:
        """Run the scheduler when enabled and there is something to schedule; returns the
        children to stop when it must not run any more."""
        if enabled and self.schedules and self.pool is None:
            self.pool = Pool(PoolConfig(name=SCHEDULER, queues=(), processes=1, max_processes=1))
        elif not (enabled and self.schedules) and self.pool is not None:
            children, self.pool = self.pool.children(), None
            return children
        return []

    def on_message(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event in (protocol.READY, protocol.SCHEDULES):
            for entry in message.get("schedules", []):
                self.info.setdefault(str(entry.get("name")), {}).update(
                    when=entry.get("when"),
                    next=entry.get("next"),
                    enabled=entry.get("enabled", True),
                    override=entry.get("override"),
                )
        elif event == protocol.SLOT_FIRED:
            name, outcome = str(message.get("schedule")), str(message.get("outcome"))
            self.stats.slots[(name, outcome)] += 1
            info = self.info.setdefault(name, {})
            info["next"] = message.get("next")
            if outcome == "fired":
                lag = float(message.get("lag") or 0.0)
                self.stats.slot_lag[name] = lag
                self.stats.slot_lag_total[name] += lag
                info.update(last_slot=message.get("slot"), last_task_id=message.get("task_id"), last_lag=lag)

    def snapshot(self, now: float) -> dict[str, Any] | None:
        pool = self.pool
        if pool is None:
            return None
        child = next(iter(pool.children()), None)
        return {
            "state": child.state.value if child else ("backing off" if pool.backing_off(now) else "starting"),
            "pid": child.pid if child else None,
            "restarts": pool.restarts,
            "last_error": pool.last_error(),
            "schedules": [{"name": name, **info} for name, info in sorted(self.info.items())],
        }
