"""SIGHUP: a pure plan (the running pools and the new config in, what to do with each pool out),
and its application to the supervisor's pools."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from task_supervisor import events
from task_supervisor.config import Config, ConfigError, PoolConfig, load_config
from task_supervisor.loop.pool import Pool

if TYPE_CHECKING:
    from task_supervisor.loop.arbiter import Supervisor

log = logging.getLogger("task_supervisor.loop.arbiter")


class Action(enum.Enum):
    KEEP = "keep"  # unchanged
    ADD = "add"  # a new pool
    RESIZE = "resize"  # only processes or max_processes changed: add or stop slots in place
    ROLL = "roll"  # anything else changed: a new pool whose children replace the old ones
    REMOVE = "remove"  # gone from the config: its children are stopped


@dataclass(frozen=True, slots=True)
class PoolChange:
    name: str
    action: Action
    config: PoolConfig | None  # the new config; None for REMOVE


def plan(old: dict[str, PoolConfig], new: dict[str, PoolConfig], roll_all: bool = False) -> list[PoolChange]:
    """One change per pool name in either config: the new config's pools first, in its order.
    ``roll_all`` (the [limits] changed, which every child applies) rolls every pool kept."""
    changes = []
    for name, config in new.items():
        before = old.get(name)
        if before is None:
            action = Action.ADD
        elif roll_all:
            action = Action.ROLL
        elif before == config:
            action = Action.KEEP
        elif replace(before, processes=config.processes, max_processes=config.max_processes) == config:
            action = Action.RESIZE
        else:
            action = Action.ROLL
        changes.append(PoolChange(name, action, config))
    changes += [PoolChange(name, Action.REMOVE, None) for name in old if name not in new]
    return changes


LOG = {
    Action.ADD: (events.POOL_ADDED, "Pool %s added (%d processes)"),
    Action.RESIZE: (events.POOL_RESIZED, "Pool %s resized to %d"),
    Action.ROLL: (events.POOL_ROLLED, "Pool %s changed: rolling its children (%d processes)"),
    Action.REMOVE: (events.POOL_REMOVED, "Pool %s removed%.0s"),
}


def from_disk(sup: Supervisor, now: float) -> None:
    """Re-read the supervisor's config file and apply it; a bad one keeps the running config."""
    try:
        new = load_config(sup.config.path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("Reload refused, keeping the running config: %s", problem, extra={"event": events.RELOAD_FAILED})
        return
    if new.django != sup.config.django or new.supervisor.node != sup.config.supervisor.node:
        log.warning(
            "[django] and supervisor.node changes need a restart; applying the rest",
            extra={"event": events.RELOAD_PARTIAL},
        )
    apply(sup, new, now)
    log.info("Reloaded %s", new.path, extra={"event": events.RELOADED})


def apply(sup: Supervisor, new: Config, now: float) -> None:
    """Reconcile the running pools with ``new``: new children come up before rolled ones drain."""
    old_pools, limits_changed, sup.config = sup.pools, new.limits != sup.config.limits, new
    if sup.janitor is not None:
        sup.janitor.config = new
    sup.pools = {}
    for change in plan({name: pool.config for name, pool in old_pools.items()}, new.pools, limits_changed):
        old, name, config = old_pools.get(change.name), change.name, change.config
        if change.action is Action.KEEP:
            sup.pools[name] = old
        elif change.action is Action.ADD:
            sup.pools[name] = Pool(config)
        elif change.action is Action.RESIZE:
            sup.pools[name] = old
            old.config = config
            sup.stop_children(old.resize(config.processes), now)
        elif change.action is Action.ROLL:
            sup.pools[name] = Pool(config)
            for child in old.children():
                sup.detach(child)
                sup.successor[child.pid] = (sup.pools[name], now + new.supervisor.graceful_timeout)
        else:
            sup.stop_children(old.children(), now)
        if change.action is not Action.KEEP:
            event, text = LOG[change.action]
            size = config.processes if config else 0
            log.info(text, name, size, extra={"event": event, "pool": name, "processes": size})
    sup.set_scheduler(new.scheduler.enabled)
