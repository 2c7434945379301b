"""The compact snapshot a supervisor publishes with each heartbeat, for the admin's dashboard.

One row per node (``NodeSnapshot``), written in the heartbeat's transaction: the dashboard reads
every node from the database and reaches none of them over the network. The snapshot is cut from
the one ``status`` shows and bounded in size, whatever the number of pools and children: lists are
capped, text is shortened, and past MAX_BYTES the children's details give way to their counts.
"""

from __future__ import annotations

import json
from typing import Any

MAX_POOLS = 32
MAX_CHILDREN = 64  # per pool; the rest are counted in children_omitted
MAX_TEXT = 200  # characters of a path or an error kept
MAX_BYTES = 32 * 1024  # of the JSON text; past it only the children's counts are kept


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:MAX_TEXT]


def _child(child: dict[str, Any]) -> dict[str, Any]:
    task = child.get("task")
    return {
        "slot": child.get("slot"),
        "pid": child.get("pid"),
        "state": child.get("state"),
        "worker_id": child.get("worker_id"),
        "rss": child.get("rss"),
        "tasks_done": child.get("tasks_done"),
        "started_at": child.get("started_at"),
        "task": None
        if not task
        else {"id": _text(task.get("id")), "path": _text(task.get("path")), "running_for": task.get("running_for")},
    }


def _pool(pool: dict[str, Any]) -> dict[str, Any]:
    children = pool.get("children") or []
    return {
        "name": _text(pool.get("name")),
        "queues": [_text(q) for q in (pool.get("queues") or [])[:MAX_POOLS]],
        "desired": pool.get("desired"),
        "running": len(children),
        "at_strength": pool.get("at_strength"),
        "backing_off": pool.get("backing_off"),
        "restarts": pool.get("restarts"),
        "last_error": _text(pool.get("last_error")),
        "children": [_child(c) for c in children[:MAX_CHILDREN]],
        "children_omitted": max(0, len(children) - MAX_CHILDREN),
    }


def compact(status: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``status`` snapshot the dashboard shows, at most MAX_BYTES as JSON."""
    lease = status.get("lease") or {}
    scheduler = status.get("scheduler")
    pools = [_pool(p) for p in (status.get("pools") or [])[:MAX_POOLS]]
    if scheduler:
        scheduler = {"state": scheduler.get("state"), "pid": scheduler.get("pid")}
    published = {
        "pid": status.get("pid"),
        "version": _text(status.get("version")),
        "phase": status.get("phase"),
        "started_at": status.get("started_at"),
        "database_ok": (status.get("database") or {}).get("ok"),
        "node_timeout": (status.get("heartbeat") or {}).get("node_timeout"),
        "lease": {"enabled": lease.get("enabled"), "held": lease.get("held"), "remaining": lease.get("remaining")},
        "scheduler": scheduler,
        "pools": pools,
    }
    if len(json.dumps(published)) > MAX_BYTES:
        for pool in pools:
            pool["children_omitted"] += len(pool["children"])
            pool["children"] = []
    return published
