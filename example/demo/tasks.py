"""Demo tasks: a tick that keeps work flowing, and reports it hands to the other pool."""

import logging
import os
import random
import time
from datetime import timedelta

from django.tasks import task
from django.utils import timezone

log = logging.getLogger("demo")

TICK_EVERY = timedelta(seconds=2)


@task()
def tick(n: int) -> int:
    """Runs on the `default` pool: enqueues a report, then schedules the next tick."""
    report.enqueue(n)
    tick.using(run_after=timezone.now() + TICK_EVERY).enqueue(n + 1)
    log.info("tick %d in pid %d: enqueued report #%d", n, os.getpid(), n)
    return n


@task(queue_name="reports")
def report(n: int) -> str:
    """Runs on the `reports` pool."""
    time.sleep(random.uniform(0.1, 0.5))
    log.info("report #%d built in pid %d", n, os.getpid())
    return f"report #{n}"


@task()
def greet(name: str) -> str:
    time.sleep(0.2)
    log.info("Hello, %s! (pid %d)", name, os.getpid())
    return f"Hello, {name}!"


@task()
def pulse() -> str:
    """Enqueued every 10 seconds by the scheduler (settings.PERIODIC_TASKS)."""
    log.info("pulse from the scheduler, run in pid %d", os.getpid())
    return timezone.now().isoformat()


@task()
def cleanup(older_than_days: int) -> int:
    """Enqueued at 03:00 Berlin time: deletes finished task rows older than ``older_than_days``."""
    from django_tasks_db.models import DBTaskResult

    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted, _ = DBTaskResult.objects.filter(finished_at__lt=cutoff).delete()
    log.info("cleanup removed %d finished task rows", deleted)
    return deleted
