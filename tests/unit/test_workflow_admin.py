"""The workflows' admin page and its cancel action, through Django's test client."""

from __future__ import annotations

from task_supervisor.workflows import chain, step


def test_the_admin_lists_workflows_shows_steps_and_cancels(db):
    from django.contrib.auth.models import User
    from django.test import Client
    from tsapp import tasks

    handle = chain(step(tasks.noop), step(tasks.noop)).enqueue(name="nightly import")
    User.objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    listing = client.get("/admin/task_supervisor/workflow/")
    assert (
        listing.status_code == 200
        and "nightly import" in listing.content.decode()
        and "0 of 2" in listing.content.decode()
    )
    page = client.get(f"/admin/task_supervisor/workflow/{handle.id}/change/")
    assert page.status_code == 200 and "tsapp.tasks.noop" in page.content.decode()
    done = client.post(
        "/admin/task_supervisor/workflow/",
        {"action": "cancel_workflows", "_selected_action": [handle.id]},
        follow=True,
    )
    assert done.status_code == 200 and handle.state == "CANCELLED"
