"""What the admin's live dashboard shows, read from the database alone, as JSON-able data.

Every node publishes its compact snapshot with its heartbeat (chores/publish.py) and the node
holding the ``figures`` lease records per-minute figures (chores/figures.py), so this page reaches
no node over the network. Its queries are a fixed handful whatever the number of tasks, nodes or
rows shown (``tests/unit/test_dashboard.py`` counts them), each on an index: the backend's READY
index, the (status, finished_at) index of migration 0005, the figures' (minute, queue) key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

MAX_NODES = 100  # node snapshots shown (newest first); the rest are counted
MAX_FAILURES = 20  # latest FAILED tasks shown
MAX_TRACEBACK = 4000  # characters of a traceback sent to the page (its end, where the error is)
MAX_QUEUES = 200
MAX_RUNNING = 20_000  # RUNNING rows counted at most (thousands of children)
RANGES = {"1h": 60, "6h": 360, "24h": 1440}  # chart range -> minutes
LATE_BEATS = 2.5  # a node whose heartbeat is this many beat intervals old is shown late
OVERDUE_GRACE_S = 60.0  # a schedule slot this late without a run is shown overdue


@dataclass(frozen=True, slots=True)
class Filters:
    """The page's filters, checked: a failure's task path (prefix) and queue, the chart range."""

    task: str = ""
    queue: str = ""
    range: str = "1h"

    @classmethod
    def from_query(cls, query: Any) -> Filters:
        """From a request's GET; ValueError with one sentence for a bad value."""
        wanted = query.get("range") or "1h"
        if wanted not in RANGES:
            raise ValueError(f"Unknown range {wanted!r}; use one of {', '.join(RANGES)}.")
        task, queue = (query.get("task") or "").strip(), (query.get("queue") or "").strip()
        if len(task) > 200 or len(queue) > 32:
            raise ValueError("A task path filter takes at most 200 characters, a queue at most 32.")
        return cls(task=task, queue=queue, range=wanted)


def collect(filters: Filters, permissions: Collection[str] = (), backend: str = "default") -> dict[str, Any]:
    """The whole page's data: nodes, queues, charts, failures, schedules, what the user may do."""
    from task_supervisor import compat

    be = compat.resolve(backend)
    nodes, stopped, db_now = node_rows()
    return {
        "now": db_now.isoformat(),
        "nodes": nodes,
        "stopped_nodes": stopped,
        "queues": queue_rows(be, nodes),
        "charts": chart_points(be.db_alias, filters, db_now),
        "failures": failure_rows(be, filters),
        "schedules": schedule_rows(db_now),
        "filters": {"task": filters.task, "queue": filters.queue, "range": filters.range, "ranges": list(RANGES)},
        "can": {verb: verb in permissions for verb in ("cancel", "retry", "pause", "schedule")},
    }


# -- nodes -------------------------------------------------------------------------------------


def node_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dt.datetime]:
    """(live nodes, stopped nodes, the database's now): two queries."""
    from django.db.models.functions import Now
    from django.utils import timezone

    from task_supervisor.models import NodeHeartbeat, NodeSnapshot

    beats = {b["node"]: b["last_seen"] for b in NodeHeartbeat.objects.values("node", "last_seen")[:MAX_NODES]}
    rows = list(
        NodeSnapshot.objects.annotate(db_now=Now())
        .order_by("-last_seen")
        .values("node", "snapshot", "last_seen", "stopped_at", "db_now")[: MAX_NODES + 1]
    )
    db_now = rows[0]["db_now"] if rows else timezone.now()
    live, stopped = [], []
    for row in rows[:MAX_NODES]:
        node = _node(row, beats.get(row["node"]), db_now)
        (stopped if node["stopped"] else live).append(node)
    live.sort(key=lambda n: n["node"])
    return live, stopped, db_now


def _node(row: dict[str, Any], beat: dt.datetime | None, db_now: dt.datetime) -> dict[str, Any]:
    snap = row["snapshot"] or {}
    age = max(0.0, (db_now - row["last_seen"]).total_seconds())
    timeout = float(snap.get("node_timeout") or 60.0)
    beat_interval = min(15.0, max(1.0, timeout / 4))
    stopped = row["stopped_at"] is not None or beat is None or age > timeout
    pools = []
    for pool in snap.get("pools") or []:
        children = [
            {**c, "task": {**c["task"], "running_for": round((c["task"].get("running_for") or 0) + age, 1)}}
            if c.get("task")
            else c
            for c in pool.get("children") or []
        ]
        pools.append({**pool, "children": children})
    return {
        "node": row["node"],
        "pid": snap.get("pid"),
        "version": snap.get("version"),
        "phase": snap.get("phase"),
        "started_at": snap.get("started_at"),
        "database_ok": snap.get("database_ok"),
        "lease": snap.get("lease") or {},
        "scheduler": snap.get("scheduler"),
        "pools": pools,
        "last_seen": row["last_seen"].isoformat(),
        "seen_ago": round(age, 1),
        "late": not stopped and age > LATE_BEATS * beat_interval,
        "stopped": stopped,
        "how_stopped": "clean exit" if row["stopped_at"] is not None else "stopped beating",
    }


# -- queues ------------------------------------------------------------------------------------


def queue_rows(be: Any, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each queue: READY depth and oldest age, RUNNING count, paused, serving pools: three queries."""
    from django.db.models import Count, Min
    from django.db.models.functions import Now
    from django.utils import timezone

    from task_supervisor.models import QueuePause

    tasks = be.model.objects.using(be.db_alias).filter(backend_name=be.alias).order_by()
    never = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
    ready = {
        r["queue_name"]: r
        for r in tasks.filter(status="READY")
        .exclude(run_after__gt=Now(), run_after__lt=never)
        .values("queue_name")
        .annotate(depth=Count("id"), oldest=Min("enqueued_at"))[:MAX_QUEUES]
    }
    running = running_by_queue(tasks)
    paused = {p.queue: p for p in QueuePause.objects.using(be.db_alias).all()[:MAX_QUEUES]}
    serving: dict[str, list[str]] = {}
    for node in nodes:
        for pool in node["pools"]:
            for queue in pool.get("queues") or []:
                serving.setdefault(queue, []).append(f"{node['node']}/{pool['name']}")
    now = timezone.now()
    rows = []
    for queue in sorted(set(ready) | set(running) | set(paused) | set(serving))[:MAX_QUEUES]:
        r, p = ready.get(queue), paused.get(queue)
        rows.append(
            {
                "queue": queue,
                "ready": r["depth"] if r else 0,
                "oldest_ready_age": round((now - r["oldest"]).total_seconds(), 1) if r and r["oldest"] else None,
                "running": running.get(queue, 0),
                "paused": p is not None,
                "paused_by": p.paused_by if p else None,
                "pools": sorted(serving.get(queue, [])),
                "unserved": queue not in serving,
            }
        )
    return rows


def running_by_queue(tasks: Any) -> dict[str, int]:
    """RUNNING rows per queue, counted here: a GROUP BY lets SQLite scan the queue index of the
    whole table rather than seek the few RUNNING rows by the (status, finished_at) index."""
    counts: dict[str, int] = {}
    for queue in tasks.filter(status="RUNNING").values_list("queue_name", flat=True)[:MAX_RUNNING]:
        counts[queue] = counts.get(queue, 0) + 1
    return counts


# -- charts ------------------------------------------------------------------------------------


def chart_points(alias: str, filters: Filters, db_now: dt.datetime) -> dict[str, Any]:
    """Per-minute points over the chosen range, summed over queues (or the filtered one): one query."""
    from django.db.models import Max, Sum

    from task_supervisor.models import MinuteFigures

    minutes = RANGES[filters.range]
    since = db_now.replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes)
    rows = MinuteFigures.objects.using(alias).filter(minute__gte=since)
    if filters.queue:
        rows = rows.filter(queue=filters.queue)
    sums = (
        rows.order_by("minute")
        .values("minute")
        .annotate(
            succeeded=Sum("succeeded"),
            failed=Sum("failed"),
            started=Sum("started"),
            latency_total=Sum("latency_ms_total"),
            latency_max=Max("latency_ms_max"),
            ready=Sum("ready"),
            running=Sum("running"),
        )
    )
    points = [
        {
            "t": r["minute"].isoformat(),
            "succeeded": r["succeeded"],
            "failed": r["failed"],
            "ready": r["ready"],
            "running": r["running"],
            "latency_ms": round(r["latency_total"] / r["started"]) if r["started"] else None,
            "latency_max_ms": r["latency_max"] if r["started"] else None,
        }
        for r in sums
    ]
    return {"since": since.isoformat(), "until": db_now.isoformat(), "minutes": minutes, "points": points}


# -- failures ----------------------------------------------------------------------------------


def failure_rows(be: Any, filters: Filters) -> list[dict[str, Any]]:
    """The latest FAILED tasks, by the (status, finished_at) index: one query."""
    from django.urls import NoReverseMatch, reverse

    rows = be.model.objects.using(be.db_alias).filter(backend_name=be.alias, status="FAILED")
    if filters.task:
        rows = rows.filter(task_path__startswith=filters.task)
    if filters.queue:
        rows = rows.filter(queue_name=filters.queue)
    fields = ("id", "task_path", "queue_name", "finished_at", "exception_class_path", "traceback", "worker_ids")
    out = []
    for r in rows.order_by("-finished_at").values(*fields)[:MAX_FAILURES]:
        try:
            link = reverse("admin:task_supervisor_taskattempts_change", args=[r["id"]])
        except NoReverseMatch:
            link = None
        ids = r["worker_ids"] if isinstance(r["worker_ids"], list) else []
        out.append(
            {
                "id": str(r["id"]),
                "task": r["task_path"],
                "queue": r["queue_name"],
                "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
                "exception": r["exception_class_path"],
                "traceback": (r["traceback"] or "")[-MAX_TRACEBACK:],
                "attempts": len(ids),
                "worker": ids[-1] if ids else None,
                "link": link,
            }
        )
    return out


# -- schedules ---------------------------------------------------------------------------------


def schedule_rows(db_now: dt.datetime) -> list[dict[str, Any]]:
    """Every periodic task: last and next run, lag (of its last run, or overdue): two queries."""
    from django.conf import settings
    from django.db.models import Max

    from task_supervisor import ops
    from task_supervisor.models import ScheduleRun
    from task_supervisor.scheduler import spec

    schedules, _ = spec.load(settings, resolve_tasks=False)
    overrides = ops.schedule_overrides()
    last = {
        r["schedule"]: r
        for r in ScheduleRun.objects.filter(schedule__in=[s.name for s in schedules], manual=False)
        .order_by()
        .values("schedule")
        .annotate(slot=Max("slot"), enqueued_at=Max("enqueued_at"))
    }
    rows = []
    for schedule in schedules:
        override = overrides.get(schedule.name)
        enabled = override.enabled if override else schedule.enabled
        run = last.get(schedule.name)
        upcoming = schedule.next_slots(db_now, 1) if enabled else []
        lag, overdue = _lag(schedule, run, enabled, db_now)
        rows.append(
            {
                "name": schedule.name,
                "task": schedule.task_path,
                "when": schedule.when,
                "enabled": enabled,
                "last": run["slot"].isoformat() if run else None,
                "next": upcoming[0].isoformat() if upcoming else None,
                "lag": lag,
                "overdue": overdue,
            }
        )
    return rows


def _lag(schedule: Any, run: dict[str, Any] | None, enabled: bool, db_now: dt.datetime) -> tuple[float | None, bool]:
    """Seconds from the last slot to its enqueue; or, when a slot since is unfired, how overdue."""
    if run is None:
        return None, False
    if enabled:
        following = schedule.next_slots(run["slot"], 1)
        if following and (db_now - following[0]).total_seconds() > OVERDUE_GRACE_S:
            return round((db_now - following[0]).total_seconds(), 1), True
    return round(max(0.0, (run["enqueued_at"] - run["slot"]).total_seconds()), 1), False
