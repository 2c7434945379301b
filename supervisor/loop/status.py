"""The supervisor's state as plain JSON-able data: what `status`, /readyz and /metrics show.

Read-only over the loop's objects; times are passed in (monotonic ``now`` and ``wall`` epoch
seconds taken at the same moment).
"""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any

from task_supervisor import __version__
from task_supervisor.loop.child import Child
from task_supervisor.loop.pool import Pool
from task_supervisor.observe import endpoints, exposition

if TYPE_CHECKING:
    from task_supervisor.loop.arbiter import Supervisor


def start_servers(sup: Supervisor) -> list[endpoints._Server]:
    """The HTTP listener and the control socket, serving from the loop's selector; raises
    OSError or SupervisorRunning if they cannot listen (the ones started are closed first)."""
    address = sup.config.supervisor.http
    servers: list[endpoints._Server] = []
    try:
        if address:
            metrics = exposition.Metrics(sup.snapshot, sup.stats)
            routes = {
                "/livez": lambda: exposition.livez(sup.snapshot()),
                "/readyz": lambda: exposition.readyz(sup.snapshot()),
                "/metrics": metrics.response,
            }
            servers.append(endpoints.HttpServer(address, routes, sup.clock))
        path = sup.config.supervisor.control_socket or endpoints.default_socket_path(sup.config.supervisor.node)
        servers.append(endpoints.ControlServer(path, lambda command: control_answer(sup, command), sup.clock))
        for server in servers:
            server.start(sup.selector)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


def control_answer(sup: Supervisor, command: str) -> bytes:
    if command == "status":
        return json.dumps(sup.snapshot()).encode()
    return json.dumps({"error": f"unknown command {command!r}; try status"}).encode()


def snapshot(sup: Supervisor, now: float, wall: float) -> dict[str, Any]:
    janitor = sup.janitor
    return {
        "node": sup.config.supervisor.node,
        "pid": sup.pid,
        "version": __version__,
        "phase": sup.phase.value,
        "uptime": round(now - sup.started_at, 3),
        "started_at": iso(wall - (now - sup.started_at)),
        "database": {"ok": janitor.db_ok if janitor else True, "error": janitor.db_error if janitor else None},
        "pools": [pool_snapshot(sup, pool, now, wall) for pool in sup.pools.values()],
        "scheduler": sup.scheduling.snapshot(now),
        "heartbeat": {
            "enabled": bool(janitor and janitor.heartbeats),
            "last_beat": janitor.last_beat if janitor else None,
            "node_timeout": sup.config.supervisor.node_timeout,
        },
        "paused_queues": sorted(sup.stats.paused_queues),
        # instant: notices of new tasks arrive (idle children poll every safety_poll only);
        # wakes: by how they came (loop/wakeups.py); claims: attempts that found no row
        "pickup": {
            "instant": sup.pickup.instant,
            "safety_poll": sup.config.supervisor.safety_poll,
            "fleet": len(sup.wakeups.fleet.members),
            "wakes": dict(sup.wakeups.counts),
            "empty_claims": sum(sup.stats.empty_claims.values()),
        },
        "workflows": dict(sup.stats.workflows),  # state -> workflows, counted by the janitor's sweep
        # [limits]: per limit, what its keys hold back (the janitor's census); claims that found
        # nothing eligible because of them
        "flow": {"limits": sup.stats.flow, "held_claims": sum(sup.stats.held_claims.values())},
        "lease": {
            "enabled": sup.lease.enabled,
            "held": sup.lease.holds(now),
            "remaining": sup.lease.remaining(now),
            "losses": sup.lease.losses,
        },
        "retries": [
            {"task_id": task_id, "path": path, "attempts": attempts, "next_attempt_at": when}
            for task_id, (path, attempts, when) in (janitor.retries_scheduled.items() if janitor else ())
        ],
    }


def pool_snapshot(sup: Supervisor, pool: Pool, now: float, wall: float) -> dict[str, Any]:
    return {
        "name": pool.name,
        "queues": list(pool.config.queues),
        "desired": len(pool.slots),
        "min": pool.config.processes,
        "max": pool.config.max_processes,
        "at_strength": pool.at_strength(),
        "backing_off": pool.backing_off(now),
        "restarts": pool.restarts,
        "last_error": pool.last_error(),
        "children": [child_snapshot(sup, slot.child, now, wall) for slot in pool.slots.values() if slot.child],
    }


def child_snapshot(sup: Supervisor, child: Child, now: float, wall: float) -> dict[str, Any]:
    rss, cpu = sup.calls.usage(child.pid)
    task = child.task
    return {
        "slot": child.spec.slot,
        "pid": child.pid,
        "state": child.state.value,
        "worker_id": child.spec.worker_id,
        "generation": child.spec.generation,
        "started_at": iso(wall - (now - child.started_at)),
        "tasks_done": child.tasks_done,
        "hung": child.hung,
        "rss": rss,
        "cpu_percent": cpu,
        "task": None
        if task is None
        else {
            "id": task.task_id,
            "path": task.path,
            "running_for": round(now - task.since, 3),
            "timeout": task.timeout,
        },
    }


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()
