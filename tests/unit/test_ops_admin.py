"""The operator's admin pages on SQLite and PostgreSQL: buttons only with their permission, each
acting through task_supervisor.ops as the logged-in user."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

CHANGELIST = "/admin/task_supervisor/taskattempts/"
SCHEDULES = {"tick": {"task": "tsapp.tasks.noop", "cron": "0 3 * * *"}}


@pytest.fixture
def admin_client(db):
    from django.contrib.auth.models import Permission, User

    def login(name: str, *perms: str) -> Client:
        user = User.objects.create_user(name, password="pw", is_staff=True)
        codenames = [
            "view_taskattempts",
            "view_queuepause",
            "view_action",
            "view_schedulerun",
            "view_cancelrequest",
            *perms,
        ]
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client = Client()
        client.force_login(user)
        return client

    with override_settings(ALLOWED_HOSTS=["testserver"], PERIODIC_TASKS=SCHEDULES):
        yield login


def test_a_staff_user_without_permissions_sees_pages_but_no_buttons(admin_client):
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks

    result = tasks.noop.enqueue()
    viewer = admin_client("viewer")
    page = viewer.get(CHANGELIST)
    assert page.status_code == 200 and b"cancel_tasks" not in page.content
    viewer.post(CHANGELIST, {"action": "cancel_tasks", "_selected_action": [str(result.id)]})
    assert DBTaskResult.objects.get(id=result.id).status == "READY"
    for url in ("/admin/task_supervisor/queuepause/", "/admin/task_supervisor/action/"):
        assert viewer.get(url).status_code == 200
    schedules = viewer.get("/admin/task_supervisor/schedulerun/")
    assert schedules.status_code == 200 and b"Run now" not in schedules.content
    assert viewer.post("/admin/task_supervisor/schedulerun/schedule/tick/run/").status_code == 403
    assert viewer.get("/admin/task_supervisor/queuepause/add/").status_code == 403


def test_cancel_retry_pause_and_run_now_from_the_admin(admin_client):
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks

    from task_supervisor.models import Action, QueuePause, ScheduleRun

    operator = admin_client("alice", "cancel_task", "retry_task", "pause_queue", "run_schedule")
    result = tasks.noop.enqueue()
    assert b"cancel_tasks" in operator.get(CHANGELIST).content
    operator.post(CHANGELIST, {"action": "cancel_tasks", "_selected_action": [str(result.id)]})
    row = DBTaskResult.objects.get(id=result.id)
    assert row.status == "FAILED" and row.exception_class_path == "task_supervisor.TaskCancelled"
    operator.post(CHANGELIST, {"action": "retry_tasks", "_selected_action": [str(result.id)]})
    assert DBTaskResult.objects.get(id=result.id).status == "READY"

    operator.post("/admin/task_supervisor/queuepause/add/", {"queue": "reports"})
    pause = QueuePause.objects.get()
    assert pause.queue == "reports" and pause.paused_by == "admin:alice"
    operator.post(
        "/admin/task_supervisor/queuepause/", {"action": "resume_queues", "_selected_action": [str(pause.pk)]}
    )
    assert not QueuePause.objects.exists()

    assert b"Run now" in operator.get("/admin/task_supervisor/schedulerun/").content
    assert operator.post("/admin/task_supervisor/schedulerun/schedule/tick/run/").status_code == 302
    assert ScheduleRun.objects.get().manual
    operator.post("/admin/task_supervisor/schedulerun/schedule/tick/disable/")
    assert b"disabled by admin:alice" in operator.get("/admin/task_supervisor/schedulerun/").content
    verbs = list(Action.objects.order_by("at").values_list("verb", flat=True))
    assert verbs == ["cancel", "retry", "pause", "resume", "schedule_run", "schedule_disable"]
    assert set(Action.objects.values_list("actor", flat=True)) == {"admin:alice"}
    assert b"schedule_disable" in operator.get("/admin/task_supervisor/action/").content
