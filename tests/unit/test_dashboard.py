"""The admin's live dashboard on SQLite and PostgreSQL: the page, its data endpoint, its buttons
and their permissions, a bounded number of queries on indexes; the snapshot each node publishes
and the per-minute figures the charts draw."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from django.test import Client, override_settings

PAGE = "/admin/task_supervisor/dashboard/"
DATA = PAGE + "data/"
ACT = PAGE + "act/"
SCRIPT = PAGE + "dashboard.js"
SCHEDULES = {"tick": {"task": "tsapp.tasks.noop", "cron": "*/5 * * * *"}}


@pytest.fixture
def login(db):
    from django.contrib.auth.models import Permission, User

    def make(name: str, *perms: str, staff: bool = True) -> Client:
        user = User.objects.create_user(name, password="pw", is_staff=staff)
        user.user_permissions.set(Permission.objects.filter(codename__in=perms))
        client = Client(enforce_csrf_checks=False)
        client.force_login(user)
        return client

    with override_settings(ALLOWED_HOSTS=["testserver"], PERIODIC_TASKS=SCHEDULES):
        yield make


def now() -> dt.datetime:
    from django.utils import timezone

    return timezone.now()


def snapshot(pools: list[dict], pid: int = 4242) -> dict:
    from task_supervisor.chores import publish

    status = {
        "pid": pid,
        "version": "9.9",
        "phase": "running",
        "started_at": "2026-01-01T00:00:00+00:00",
        "database": {"ok": True},
        "heartbeat": {"node_timeout": 60.0},
        "lease": {"enabled": True, "held": True, "remaining": 50.0},
        "pools": pools,
    }
    return publish.compact(status)


def pool(name: str, queues: list[str], children: int, task: str | None = None) -> dict:
    kids = [
        {
            "slot": i,
            "pid": 1000 + i,
            "state": "busy" if task and i == 0 else "idle",
            "worker_id": f"n:{name}:{i}:1",
            "rss": 50 * 2**20,
            "tasks_done": 3,
            "task": {"id": task, "path": "tsapp.tasks.sleep", "running_for": 2.0} if task and i == 0 else None,
        }
        for i in range(children)
    ]
    return {"name": name, "queues": queues, "desired": children, "at_strength": True, "children": kids}


def seed(nodes: int = 1, tasks: int = 3) -> dict:
    """Live nodes, a stopped one, tasks in every state, a pause, figures and a schedule run."""
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks as t

    from task_supervisor.models import MinuteFigures, NodeHeartbeat, NodeSnapshot, QueuePause, ScheduleRun

    running = t.sleep.enqueue(30)
    DBTaskResult.objects.filter(id=running.id).update(
        status="RUNNING", started_at=now(), worker_ids=["alpha:default:0:1"]
    )
    for i in range(nodes):
        name = "alpha" if i == 0 else f"node{i}"
        NodeHeartbeat.objects.create(node=name, pid=4242, pools=["default"], started_at=now(), last_seen=now())
        NodeSnapshot.objects.create(
            node=name, last_seen=now(), snapshot=snapshot([pool("default", ["default"], 2, str(running.id))])
        )
    NodeSnapshot.objects.create(node="gone", last_seen=now() - dt.timedelta(minutes=5), snapshot=snapshot([]))
    failed = []
    for i in range(tasks):
        t.noop.enqueue()
        t.report.enqueue(i)
        result = t.fail.enqueue(f"boom {i}")
        DBTaskResult.objects.filter(id=result.id).update(
            status="FAILED",
            finished_at=now() - dt.timedelta(seconds=i),
            exception_class_path="builtins.ValueError",
            traceback=f"Traceback (most recent call last):\nValueError: boom {i}\n",
            worker_ids=["alpha:default:0:1"],
        )
        failed.append(str(result.id))
    QueuePause.objects.get_or_create(queue="reports", defaults={"paused_by": "test"})
    start = now().replace(second=0, microsecond=0)
    for m in range(1, 1 + 3 * tasks):
        MinuteFigures.objects.update_or_create(
            minute=start - dt.timedelta(minutes=m),
            queue="default",
            defaults=dict(
                succeeded=m,
                failed=1,
                started=2,
                latency_ms_total=40,
                latency_ms_max=30,
                ready=5,
                running=1,
                node="alpha",
            ),
        )
    ScheduleRun.objects.get_or_create(schedule="tick", slot=start - dt.timedelta(minutes=5), defaults={"node": "alpha"})
    return {"running": str(running.id), "failed": failed}


def test_the_page_is_for_staff_with_the_dashboard_permission(login):
    assert Client().get(PAGE).status_code == 302  # to the admin's login
    outsider = login("outsider", "view_dashboard", staff=False)
    assert outsider.get(PAGE).status_code == 302 and outsider.get(DATA).status_code == 302
    staff = login("staff")
    for url in (PAGE, DATA, SCRIPT):
        assert staff.get(url).status_code == 403, url
    assert staff.post(ACT, {"verb": "pause", "target": "default"}).status_code == 403
    viewer = login("viewer", "view_dashboard")
    page = viewer.get(PAGE)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="ts-config"' in html and "/admin/task_supervisor/dashboard/dashboard.js" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from another site: no CDN
    script = viewer.get(SCRIPT)
    assert script.status_code == 200 and script["Content-Type"].startswith("text/javascript")
    assert b"setTimeout(refresh" in script.content
    index = viewer.get("/admin/")
    assert b"/admin/task_supervisor/dashboard/" in index.content


def test_the_data_shows_nodes_queues_charts_failures_and_schedules(login):
    ids = seed()
    data = login("viewer", "view_dashboard").get(DATA + "?range=6h").json()
    (node,) = data["nodes"]
    assert node["node"] == "alpha" and node["pid"] == 4242 and node["version"] == "9.9"
    assert node["lease"]["held"] is True and not node["late"]
    (default_pool,) = node["pools"]
    busy = default_pool["children"][0]
    assert default_pool["at_strength"] and busy["task"]["id"] == ids["running"] and busy["task"]["running_for"] >= 2.0
    assert busy["rss"] == 50 * 2**20
    assert [n["node"] for n in data["stopped_nodes"]] == ["gone"]
    assert data["stopped_nodes"][0]["how_stopped"] == "stopped beating"
    queues = {q["queue"]: q for q in data["queues"]}
    assert queues["default"]["ready"] == 3 and queues["default"]["running"] == 1 and not queues["default"]["unserved"]
    assert queues["default"]["pools"] == ["alpha/default"] and queues["default"]["oldest_ready_age"] >= 0
    assert queues["reports"]["paused"] and queues["reports"]["unserved"] and queues["reports"]["ready"] == 3
    points = data["charts"]["points"]
    assert len(points) == 9 and data["charts"]["minutes"] == 360
    assert points[-1]["succeeded"] == 1 and points[0]["succeeded"] == 9 and points[0]["latency_ms"] == 20
    assert [f["id"] for f in data["failures"]] == ids["failed"]  # newest first
    first = data["failures"][0]
    assert first["exception"] == "builtins.ValueError" and "ValueError: boom 0" in first["traceback"]
    assert first["link"] == f"/admin/task_supervisor/taskattempts/{ids['failed'][0]}/change/"
    (tick,) = data["schedules"]
    assert tick["name"] == "tick" and tick["last"] and tick["next"] and tick["lag"] is not None
    assert data["can"] == {"cancel": False, "retry": False, "pause": False, "schedule": False}


def test_failures_filter_by_task_path_and_queue_and_bad_filters_are_refused(login):
    from tsapp import tasks as t

    seed()
    other = t.report.enqueue(99)
    from django_tasks_db.models import DBTaskResult

    DBTaskResult.objects.filter(id=other.id).update(status="FAILED", finished_at=now(), exception_class_path="x.Y")
    viewer = login("viewer", "view_dashboard")
    by_path = viewer.get(DATA, {"task": "tsapp.tasks.rep"}).json()["failures"]
    assert [f["id"] for f in by_path] == [str(other.id)]
    by_queue = viewer.get(DATA, {"queue": "reports"}).json()
    assert [f["queue"] for f in by_queue["failures"]] == ["reports"] and by_queue["charts"]["points"] == []
    assert len(viewer.get(DATA, {"queue": "default"}).json()["failures"]) == 3
    bad = viewer.get(DATA, {"range": "1y"})
    assert bad.status_code == 400 and "Unknown range '1y'" in bad.json()["error"]
    assert viewer.get(DATA, {"queue": "q" * 40}).status_code == 400


def test_the_page_queries_are_bounded_whatever_the_rows(login):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    viewer = login("viewer", "view_dashboard", "pause_queue", "retry_task")
    seed(nodes=1, tasks=1)
    viewer.get(DATA)  # sessions and permissions cached as in a live page
    with CaptureQueriesContext(connection) as few:
        assert viewer.get(DATA).status_code == 200
    seed_more = seed  # a second round: more nodes, tasks, failures and figures
    from task_supervisor.models import NodeHeartbeat, NodeSnapshot

    NodeHeartbeat.objects.all().delete()
    NodeSnapshot.objects.all().delete()
    seed_more(nodes=12, tasks=25)
    with CaptureQueriesContext(connection) as many:
        data = viewer.get(DATA).json()
    assert len(data["nodes"]) == 12 and len(data["failures"]) == 20
    assert len(many.captured_queries) == len(few.captured_queries), [q["sql"] for q in many.captured_queries]
    # 4 for the session, the user and their permissions; 9 for the page: 2 nodes, 3 queues,
    # 1 chart, 1 failures, 2 schedules
    assert len(many.captured_queries) <= 13, "\n".join(q["sql"][:90] for q in many.captured_queries)


def test_the_page_queries_of_the_task_table_use_indexes(db, login):
    from django.db import connection
    from django_tasks_db.models import DBTaskResult

    seed()
    tasks = DBTaskResult.objects.order_by()
    failures = tasks.filter(backend_name="default", status="FAILED").order_by("-finished_at")[:20]
    running = tasks.filter(status="RUNNING").values("queue_name")
    ready = tasks.filter(status="READY").values("queue_name")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")  # a tiny table: make the planner say what it can use
    plans = [q.explain() for q in (failures, running, ready)]
    assert "task_supervisor_status_fin_idx" in plans[0], plans[0]
    assert "task_supervisor_status_fin_idx" in plans[1], plans[1]
    assert "tasks_db_new_ordering_idx" in plans[2] or "status" in plans[2].lower(), plans[2]


def test_buttons_act_only_with_their_permission(login):
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks as t

    from task_supervisor.models import Action, QueuePause, ScheduleRun

    ids = seed()
    viewer = login("viewer", "view_dashboard")
    for verb, target in (
        ("pause", "default"),
        ("retry", ids["failed"][0]),
        ("cancel", ids["running"]),
        ("run", "tick"),
    ):
        answer = viewer.post(ACT, {"verb": verb, "target": target})
        assert answer.status_code == 403 and not answer.json()["ok"], verb
    assert not QueuePause.objects.filter(queue="default").exists() and not Action.objects.exists()
    operator = login("op", "view_dashboard", "pause_queue", "retry_task", "cancel_task", "run_schedule")
    assert operator.get(DATA).json()["can"] == {"cancel": True, "retry": True, "pause": True, "schedule": True}
    assert operator.post(ACT, {"verb": "pause", "target": "default"}).json() == {
        "ok": True,
        "message": "Paused default.",
    }
    assert QueuePause.objects.get(queue="default").paused_by == "admin:op"
    assert operator.post(ACT, {"verb": "resume", "target": "reports"}).json()["ok"]
    assert not QueuePause.objects.filter(queue="reports").exists()
    assert operator.post(ACT, {"verb": "retry", "target": ids["failed"][0]}).json()["ok"]
    assert DBTaskResult.objects.get(id=ids["failed"][0]).status == "READY"
    ready = t.noop.enqueue()
    assert operator.post(ACT, {"verb": "cancel", "target": str(ready.id)}).json()["ok"]
    assert DBTaskResult.objects.get(id=ready.id).exception_class_path == "task_supervisor.TaskCancelled"
    assert operator.post(ACT, {"verb": "run", "target": "tick"}).json()["ok"]
    assert ScheduleRun.objects.filter(schedule="tick", manual=True).count() == 1
    assert sorted(Action.objects.values_list("verb", flat=True)) == [
        "cancel",
        "pause",
        "resume",
        "retry",
        "schedule_run",
    ]
    unknown = operator.post(ACT, {"verb": "explode", "target": "x"})
    assert unknown.status_code == 400 and unknown.json()["message"] == "Unknown action 'explode'."
    bad = operator.post(ACT, {"verb": "retry", "target": str(uuid.uuid4())})
    assert bad.status_code == 400 and "no such task" in bad.json()["message"]
    assert operator.get(ACT).status_code == 405


def test_a_post_without_the_csrf_token_is_refused(login):
    from django.contrib.auth.models import User

    from task_supervisor.models import QueuePause

    login("op", "view_dashboard", "pause_queue")
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.get(username="op"))
    assert client.post(ACT, {"verb": "pause", "target": "default"}).status_code == 403
    assert not QueuePause.objects.exists()


# -- what a node publishes, and the figures --------------------------------------------------------


def test_the_published_snapshot_is_bounded_whatever_the_pools_and_children():
    from task_supervisor.chores import publish

    huge = snapshot([pool(f"p{i}", [f"q{i}" * 50], 200, task=str(uuid.uuid4())) for i in range(100)])
    text = json.dumps(huge)
    assert len(text) <= publish.MAX_BYTES
    assert len(huge["pools"]) == publish.MAX_POOLS and huge["pools"][0]["children_omitted"] == 200
    small = snapshot([pool("default", ["default"], 3, task="t1")])
    assert small["pools"][0]["children"][0]["task"] == {"id": "t1", "path": "tsapp.tasks.sleep", "running_for": 2.0}
    assert small["node_timeout"] == 60.0 and small["lease"]["held"]


def test_the_figures_chore_records_the_last_minutes_once_under_its_lease(db):
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks as t

    from task_supervisor import compat
    from task_supervisor.chores import figures
    from task_supervisor.config import RetentionConfig
    from task_supervisor.models import Lease, MinuteFigures, NodeSnapshot

    minute = figures.minute_of(now() - dt.timedelta(seconds=60 + figures.SETTLE_S))
    for status, count in (("SUCCESSFUL", 3), ("FAILED", 2)):
        for i in range(count):
            result = t.noop.enqueue()
            DBTaskResult.objects.filter(id=result.id).update(
                status=status,
                enqueued_at=minute,
                started_at=minute + dt.timedelta(seconds=1 + i),
                finished_at=minute + dt.timedelta(seconds=10),
            )
    t.noop.enqueue()  # READY now
    old = MinuteFigures.objects.create(minute=minute - dt.timedelta(days=8), queue="default", node="x")
    NodeSnapshot.objects.create(node="ancient", last_seen=now() - dt.timedelta(days=8), snapshot={})
    backend = compat.resolve("default")
    chore = figures.Figures("alpha", clock=lambda: 0.0)
    chore.tick(0.0, [backend], RetentionConfig())
    row = MinuteFigures.objects.get(minute=minute, queue="default")
    assert (row.succeeded, row.failed, row.started, row.ready, row.node) == (3, 2, 5, 1, "alpha")
    assert row.latency_ms_max == 3000 and row.latency_ms_total == 1000 + 2000 + 3000 + 1000 + 2000
    assert not MinuteFigures.objects.filter(id=old.id).exists() and not NodeSnapshot.objects.exists()
    assert Lease.objects.get(name="figures").holder == "alpha"
    other = figures.Figures("beta", clock=lambda: 0.0)
    other.tick(0.0, [backend], RetentionConfig())  # the lease is alpha's: beta writes nothing
    assert not other.held and MinuteFigures.objects.filter(minute=minute).count() == 1
    chore.tick(chore.next_due(), [backend], RetentionConfig())  # nothing new to write, nothing twice
    assert MinuteFigures.objects.filter(minute=minute).count() == 1


def test_due_minutes_catch_up_a_few_after_a_gap():
    from task_supervisor.chores.figures import CATCH_UP_MINUTES, due_minutes

    at = dt.datetime(2026, 1, 1, 12, 0, 10, tzinfo=dt.UTC)  # 11:59 is not settled until 12:00:05
    assert due_minutes(at, None)[-1] == dt.datetime(2026, 1, 1, 11, 59, tzinfo=dt.UTC)
    assert len(due_minutes(at, None)) == CATCH_UP_MINUTES
    assert due_minutes(at, dt.datetime(2026, 1, 1, 11, 59, tzinfo=dt.UTC)) == []
    early = dt.datetime(2026, 1, 1, 12, 0, 3, tzinfo=dt.UTC)
    assert due_minutes(early, None)[-1] == dt.datetime(2026, 1, 1, 11, 58, tzinfo=dt.UTC)


def test_retention_figures_is_a_duration_of_7_days_by_default(tmp_path):
    from task_supervisor.config import ConfigError, load_config

    path = tmp_path / "config.toml"
    path.write_text('[django]\nsettings = "s"\n')
    assert load_config(path).retention.figures == 7 * 86400
    assert not load_config(path).retention.enabled  # the other kinds stay kept for ever
    path.write_text('[django]\nsettings = "s"\n[retention]\nfigures = "2d"\n')
    assert load_config(path).retention.figures == 2 * 86400
    path.write_text('[django]\nsettings = "s"\n[retention]\nfigures = "soon"\n')
    with pytest.raises(ConfigError, match=re.escape('retention.figures must be a duration such as "7d"')):
        load_config(path)


def test_without_a_database_task_backend_the_data_says_why(login):
    viewer = login("viewer", "view_dashboard")
    with override_settings(TASKS={"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}):
        answer = viewer.get(DATA)
    assert answer.status_code == 503 and "django-tasks-db" in answer.json()["error"]
