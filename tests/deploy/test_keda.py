"""KEDA owns the replica count where it is used, scales the right Deployment, and its query counts
the work of the pools' queues on the real schema (PostgreSQL)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from tests.deploy.manifests import Manifest, all_of, load_rendered_config, one, supervisor_container

# Rows the query must count and skip, by (queue, status, run_after in the future).
COUNTED = [("default", "READY", False), ("default", "READY", False), ("reports", "READY", False)]
COUNTED_RUNNING = [("reports", "RUNNING", False)]
SKIPPED = [("default", "READY", True), ("elsewhere", "READY", False), ("default", "SUCCESSFUL", False)]


def postgresql_trigger(manifests: list[Manifest]) -> Manifest:
    (trigger,) = one(manifests, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    return trigger["metadata"]


def test_replicas_are_fixed_exactly_where_keda_does_not_scale(manifests):
    deployment = one(manifests, "Deployment")
    if all_of(manifests, "ScaledObject"):
        assert "replicas" not in deployment["spec"], "a fixed count would fight KEDA on every apply"
    else:
        assert deployment["spec"]["replicas"] >= 1


def test_the_scaled_object_targets_the_deployment(rendered):
    manifests = rendered["keda"]
    spec = one(manifests, "ScaledObject")["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == one(manifests, "Deployment")["metadata"]["name"]
    container = supervisor_container(manifests)
    assert target["envSourceContainerName"] == container["name"]
    env = {e["name"] for e in container["env"]}
    assert postgresql_trigger(manifests)["connectionFromEnv"] in env
    # Zero replicas would leave periodic tasks unscheduled and dead pods' tasks unrecovered.
    assert spec["minReplicaCount"] >= 1
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]


def test_the_query_watches_the_pools_queues_and_targets_a_pods_children(rendered):
    manifests = rendered["keda"]
    config = load_rendered_config(manifests)
    trigger = postgresql_trigger(manifests)
    (queue_list,) = re.findall(r"queue_name IN \(([^)]*)\)", trigger["query"])
    queues = {q.strip().strip("'") for q in queue_list.split(",")}
    assert queues == {q for pool in config.pools.values() for q in pool.queues}
    children = sum(pool.max_processes for pool in config.pools.values())
    assert float(trigger["targetQueryValue"]) == children


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_the_query_counts_runnable_and_running_tasks(db, rendered):
    """Run against a migrated database, in a session time zone west of UTC: "no run_after" is
    stored as 9999-01-01 UTC and must still count."""
    from django.db import connection

    for queue, status, future in COUNTED + COUNTED_RUNNING + SKIPPED:
        enqueue(queue, status, future)
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'America/New_York'")
        cursor.execute(postgresql_trigger(rendered["keda"])["query"])
        (count,) = cursor.fetchone()
    assert count == len(COUNTED + COUNTED_RUNNING)


def enqueue(queue: str, status: str, future: bool) -> None:
    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks

    task = tasks.add.using(queue_name=queue)
    if future:
        task = task.using(run_after=timezone.now() + timedelta(hours=1))
    result = task.enqueue(1, 1)
    DBTaskResult.objects.filter(id=result.id).update(status=status)
