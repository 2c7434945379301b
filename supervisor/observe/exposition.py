"""What the endpoints say: liveness, readiness, Prometheus metrics, and the status text."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from task_supervisor.observe.endpoints import Response
from task_supervisor.observe.stats import Stats

KEYS_SHOWN = 20  # as flowinfo.KEYS_SHOWN: keys per limited path in the census

Snapshot = dict[str, Any]


def livez(snapshot: Snapshot) -> Response:
    """The loop is turning (this answer comes from it); never touches the database."""
    return Response(200, _json({"status": "alive", "phase": snapshot["phase"]}))


def readiness(snapshot: Snapshot) -> list[str]:
    """Why the supervisor is not ready; empty when it is."""
    reasons = []
    if snapshot["phase"] != "running":
        reasons.append(f"supervisor is {snapshot['phase']}")
    if not snapshot["database"]["ok"]:
        reasons.append(f"database unreachable: {snapshot['database']['error']}")
    lease = snapshot.get("lease") or {}
    if lease.get("enabled") and not lease.get("held"):
        reasons.append("the node's lease on its running tasks is not renewed (heartbeat failing)")
    for pool in snapshot["pools"]:
        if pool["backing_off"]:
            reason = f": {pool['last_error']}" if pool["last_error"] else ""
            reasons.append(f"pool {pool['name']} is backing off after failures{reason}")
        for child in pool["children"]:
            if child.get("hung"):
                reasons.append(f"child {child['worker_id']} is hung ({child['hung']}); it is being replaced")
    return reasons


def readyz(snapshot: Snapshot) -> Response:
    reasons = readiness(snapshot)
    if reasons:
        return Response(503, _json({"ready": False, "reasons": reasons}))
    return Response(200, _json({"ready": True}))


def _json(data: Any) -> bytes:
    return json.dumps(data).encode() + b"\n"


# The counters kept in Stats, exported as they are: (name, help, labels, Stats attribute).
COUNTERS = (
    ("task_supervisor_restarts", "Child exits by pool and reason.", ["pool", "reason"], "restarts"),
    ("task_supervisor_tasks_started", "Tasks started per pool.", ["pool"], "tasks_started"),
    ("task_supervisor_tasks_finished", "Tasks finished per pool and status.", ["pool", "status"], "tasks_finished"),
    (
        "task_supervisor_timeouts",
        "Task timeouts: soft (TaskTimeout raised) or hard (killed).",
        ["pool", "kind"],
        "timeouts",
    ),
    ("task_supervisor_lost_tasks", "Tasks whose worker died, by outcome.", ["pool", "outcome"], "lost_tasks"),
    ("task_supervisor_retries", "Retries scheduled and retry budgets exhausted.", ["pool", "outcome"], "retries"),
    (
        "task_supervisor_fenced_writes",
        "Task finishes not written: the row was no longer RUNNING under the worker's id.",
        ["pool"],
        "fenced_writes",
    ),
    (
        "task_supervisor_children_hung",
        "Children found hung (stopped, or silent while idle) and replaced.",
        ["pool"],
        "hung",
    ),
    ("task_supervisor_scale_events", "Autoscaling decisions.", ["pool", "direction"], "scale_events"),
    (
        "task_supervisor_claims_empty",
        "Claim attempts that found no READY task, per pool (with tasks_started: every claim attempt).",
        ["pool"],
        "empty_claims",
    ),
    (
        "task_supervisor_workflow_sweeps",
        "Workflow hand-overs the janitor's sweep completed (a step's failure, or a child that died first).",
        ["outcome"],
        "workflow_sweeps",
    ),
    (
        "task_supervisor_schedule_slots",
        "Scheduler slots by outcome: fired here, taken by another replica, overlap (skipped), missed.",
        ["schedule", "outcome"],
        "slots",
    ),
    (
        "task_supervisor_pruned_rows",
        "Rows deleted by retention: successful and failed task rows, schedule run log rows.",
        ["kind"],
        "pruned",
    ),
    (
        "task_supervisor_cancels",
        "Running tasks told to stop because an operator cancelled them.",
        ["pool"],
        "cancels",
    ),
)


class SupervisorCollector(Collector):
    """Reads the supervisor's snapshot and counters at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot], stats: Stats) -> None:
        self.snapshot = snapshot
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        snap, stats = self.snapshot(), self.stats
        info = InfoMetricFamily("task_supervisor", "The supervisor's version and node.")
        info.add_metric([], {"version": snap["version"], "node": snap["node"]})
        yield info
        yield _gauge(
            "task_supervisor_uptime_seconds", "Seconds since the supervisor started.", [], [([], snap["uptime"])]
        )
        yield from _pools(snap)
        for name, text, labels, attribute in COUNTERS:
            counts = getattr(stats, attribute)
            yield _counter(name, text, labels, {k if isinstance(k, tuple) else (k,): v for k, v in counts.items()})
        yield from _lease(snap)
        yield from _pickup(snap)
        yield from _queues(stats)
        yield from _schedule_lag(stats)
        yield from _flow(stats)
        yield _gauge(
            "task_supervisor_workflows",
            "Workflows by state, in the database (counted by the janitor's sweep).",
            ["state"],
            [([state], float(n)) for state, n in stats.workflows.items()],
        )
        yield _gauge(
            "task_supervisor_database_up",
            "1 when the supervisor's last database work succeeded.",
            [],
            [([], 1.0 if snap["database"]["ok"] else 0.0)],
        )


def _pools(snap: Snapshot) -> Iterator[Any]:
    children = GaugeMetricFamily("task_supervisor_children", "Children per pool and state.", labels=["pool", "state"])
    size = GaugeMetricFamily(
        "task_supervisor_pool_processes", "Pool size: desired, min and max.", labels=["pool", "bound"]
    )
    for pool in snap["pools"]:
        for state in ("starting", "idle", "busy", "stopping"):
            count = sum(1 for c in pool["children"] if c["state"] == state)
            children.add_metric([pool["name"], state], count)
        for bound in ("desired", "min", "max"):
            size.add_metric([pool["name"], bound], pool[bound])
    yield children
    yield size


def _lease(snap: Snapshot) -> Iterator[Any]:
    lease = snap.get("lease") or {}
    if lease.get("enabled"):
        yield _gauge(
            "task_supervisor_lease_remaining_seconds",
            "Seconds until this node's running tasks are stopped unless a heartbeat renews its lease.",
            [],
            [([], lease["remaining"])],
        )
        yield _counter(
            "task_supervisor_lease_losses", "Times the lease ran out before a renewal.", [], {(): lease["losses"]}
        )


def _pickup(snap: Snapshot) -> Iterator[Any]:
    pickup = snap.get("pickup") or {}
    yield _gauge(
        "task_supervisor_instant_pickup",
        "1 while notices of new tasks arrive (idle children poll only every safety_poll).",
        [],
        [([], 1.0 if pickup.get("instant") else 0.0)],
    )
    yield _counter(
        "task_supervisor_wakes",
        'Idle children woken, by how: "notice" (this node took a new task\'s notice), "pass" (passed on by '
        'another node), "all" (a notice for every node), "backlog"; and "passed" (notices passed on).',
        ["how"],
        {(how,): n for how, n in (pickup.get("wakes") or {}).items()},
    )


def _queues(stats: Stats) -> Iterator[Any]:
    yield _gauge(
        "task_supervisor_queue_depth",
        "READY tasks that may run now, per queue.",
        ["queue"],
        [([q], n) for q, n in stats.queue_depth.items()],
    )
    yield _gauge(
        "task_supervisor_oldest_ready_age_seconds",
        "Age of the oldest READY task, per queue.",
        ["queue"],
        [([q], a) for q, a in stats.oldest_ready_age.items()],
    )
    yield _gauge(
        "task_supervisor_queue_paused",
        "1 for each queue an operator paused (no child claims from it).",
        ["queue"],
        [([q], float(v)) for q, v in stats.paused_queues.items()],
    )


def _flow(stats: Stats) -> Iterator[Any]:
    """[limits]: per limit, and per key for the keys the census shows (those holding most back)."""
    yield _counter(
        "task_supervisor_claims_held_back",
        "Claims that found nothing eligible because limits held READY tasks back, per pool.",
        ["pool"],
        {(pool,): n for pool, n in stats.held_claims.items()},
    )
    for name, field, text in (
        ("held_back", "held_back", "READY tasks its limits hold back now"),
        ("running", "running", "Tasks holding its concurrency slots"),
    ):
        yield _gauge(
            f"task_supervisor_limit_{name}", f"{text}, per limited task path.", ["path"],
            [([c["path"]], float(c[field])) for c in stats.flow],
        )  # fmt: skip
        yield _gauge(
            f"task_supervisor_limit_key_{name}",
            f"{text}, per key (the keys holding most back, at most {KEYS_SHOWN} per path).",
            ["path", "key"],
            [([c["path"], k["key"]], float(k[field])) for c in stats.flow for k in c["keys"]],
        )


def _schedule_lag(stats: Stats) -> Iterator[Any]:
    lag = SummaryMetricFamily(
        "task_supervisor_schedule_lag_seconds",
        "Seconds from a slot's time to its task row's commit, over the slots fired here.",
        labels=["schedule"],
    )
    for name, total in sorted(stats.slot_lag_total.items()):
        lag.add_metric([name], count_value=stats.slots[(name, "fired")], sum_value=total)
    yield lag
    yield _gauge(
        "task_supervisor_schedule_last_lag_seconds",
        "Lag of the latest slot fired here, per schedule.",
        ["schedule"],
        [([k], v) for k, v in stats.slot_lag.items()],
    )


def _gauge(name: str, text: str, labels: list[str], values: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


def _counter(name: str, text: str, labels: list[str], counts: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, value in sorted(counts.items()):
        family.add_metric(list(key), value)
    return family


class Metrics:
    """A private registry (never the process-global one) with the supervisor's collector."""

    def __init__(self, snapshot: Callable[[], Snapshot], stats: Stats) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SupervisorCollector(snapshot, stats))

    def response(self) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
