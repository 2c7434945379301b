"""`task-supervisor status`: the running supervisor's pools and children, for a terminal."""

from __future__ import annotations

from typing import Any


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}MiB"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def render(snapshot: dict[str, Any]) -> str:
    lines = [
        f"node {snapshot['node']}  pid {snapshot['pid']}  {snapshot['phase']}  up {snapshot['uptime']:.0f}s  "
        f"task-supervisor {snapshot['version']}",
        f"database: {'ok' if snapshot['database']['ok'] else 'DOWN: ' + str(snapshot['database']['error'])}",
    ]
    for pool in snapshot["pools"]:
        size = f"{len(pool['children'])}/{pool['desired']}"
        if pool["min"] != pool["max"]:
            size += f" (autoscale {pool['min']}..{pool['max']})"
        flags = " backing off" if pool["backing_off"] else ""
        lines.append("")
        lines.append(
            f"pool {pool['name']}  queues {','.join(pool['queues'])}  children {size}  "
            f"restarts {pool['restarts']}{flags}"
        )
        if pool["last_error"]:
            lines.append(f"  last error: {pool['last_error']}")
        lines.append(
            f"  {'SLOT':>4}  {'PID':>7}  {'STATE':<8}  {'WORKER ID':<32}  {'RSS':>7}  {'CPU':>4}  {'DONE':>5}  TASK"
        )
        for child in pool["children"]:
            task = child["task"]
            doing = "-" if task is None else f"{task['path']} {task['id']} for {task['running_for']:.1f}s"
            lines.append(
                f"  {child['slot']:>4}  {child['pid']:>7}  {child['state']:<8}  {child['worker_id']:<32}  "
                f"{_mib(child['rss']):>7}  {_cpu(child['cpu_percent']):>4}  {child['tasks_done']:>5}  {doing}"
            )
    lines.append("")
    lines += _scheduler_lines(snapshot.get("scheduler"))
    beat = snapshot["heartbeat"]
    lines.append(
        "heartbeat: "
        + (f"last {beat['last_beat']} (node_timeout {beat['node_timeout']:g}s)" if beat["enabled"] else "off")
    )
    lease = snapshot.get("lease") or {}
    if lease.get("enabled"):
        held = f"held, {lease['remaining']:.1f}s left" if lease["held"] else "NOT HELD: running tasks are stopped"
        lines.append(f"lease: {held} (lost {lease['losses']} times)")
    lines += _flow_lines(snapshot.get("flow") or {})
    if paused := snapshot.get("paused_queues"):
        lines.append(f"paused queues: {', '.join(paused)}")
    if workflows := snapshot.get("workflows"):
        lines.append("workflows: " + ", ".join(f"{n} {state.lower()}" for state, n in workflows.items()))
    hung = [c["worker_id"] for pool in snapshot["pools"] for c in pool["children"] if c.get("hung")]
    if hung:
        lines.append(f"hung children being replaced: {', '.join(hung)}")
    for retry in snapshot.get("retries", []):
        lines.append(
            f"retry: {retry['path']} {retry['task_id']} after attempt {retry['attempts']}, "
            f"next at {retry['next_attempt_at']}"
        )
    return "\n".join(lines) + "\n"


def _scheduler_lines(scheduler: dict[str, Any] | None) -> list[str]:
    if not scheduler:
        return ["scheduler: off (disabled, or no PERIODIC_TASKS)"]
    lines = [
        f"scheduler: {scheduler['state']}  pid {scheduler['pid'] or '-'}  restarts {scheduler['restarts']}"
        + (f"  last error: {scheduler['last_error']}" if scheduler["last_error"] else "")
    ]
    for entry in scheduler["schedules"]:
        last = entry.get("last_slot")
        lag = f" (lag {entry['last_lag'] * 1000:.0f}ms)" if entry.get("last_lag") is not None else ""
        when = entry.get("when") or ""
        switched = {True: "  (enabled at run time)", False: "  (disabled at run time)"}.get(entry.get("override"), "")
        lines.append(
            f"  {entry['name']:<24} {when:<18} last {last or '-'}{lag}  next {entry.get('next') or '-'}{switched}"
        )
    return lines


def _flow_lines(flow: dict[str, Any]) -> list[str]:
    """[limits]: each limit, what it holds back, and the keys at their limit with the reason."""
    lines = []
    for limit in flow.get("limits") or []:
        more = " (more READY rows than counted)" if limit["truncated"] else ""
        lines.append(
            f"limit {limit['path']}: {limit['limit']}; {limit['running']} running, "
            f"{limit['held_back']} held back{more}" + (f"  ERROR: {limit['error']}" if limit["error"] else "")
        )
        for key in limit["keys"]:
            if key["held_back"] or key["reason"]:
                lines.append(f"  key {key['key'] or '-'}: {key['held_back']} held back: {key['reason']}")
    return lines
