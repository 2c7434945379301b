"""SIGHUP as a plan: the running pools and the new config in, what to do with each pool out. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from task_supervisor.config import PoolConfig


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


def plan(old: dict[str, PoolConfig], new: dict[str, PoolConfig]) -> list[PoolChange]:
    """One change per pool name in either config: the new config's pools first, in its order."""
    changes = []
    for name, config in new.items():
        before = old.get(name)
        if before is None:
            action = Action.ADD
        elif before == config:
            action = Action.KEEP
        elif replace(before, processes=config.processes, max_processes=config.max_processes) == config:
            action = Action.RESIZE
        else:
            action = Action.ROLL
        changes.append(PoolChange(name, action, config))
    changes += [PoolChange(name, Action.REMOVE, None) for name in old if name not in new]
    return changes
