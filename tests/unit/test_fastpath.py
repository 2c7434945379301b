"""The child's precompiled pick and updates (PostgreSQL) do what the ORM's calls do."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from task_supervisor.worker import fastpath

pytestmark = pytest.mark.parametrize("db", ["postgres"], indirect=True)


@pytest.fixture
def backend(db):
    from task_supervisor import compat

    backend = compat.resolve("default")
    fast = fastpath.install(backend)
    assert fast is not None
    yield backend, fast
    fastpath.uninstall(backend.model)


def fields(row: Any) -> dict[str, Any]:
    return {f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields}


def enqueue(queue: str = "default", priority: int = 0) -> str:
    from tsapp import tasks

    return str(tasks.add.using(queue_name=queue, priority=priority).enqueue(1, 2).id)


def test_the_pick_returns_the_row_the_orm_returns(backend):
    backend, fast = backend
    enqueue(priority=-5)
    best = enqueue(priority=7)
    ready = backend.model.objects.ready().filter(queue_name__in=["default"])
    with transaction.atomic():
        orm = ready.select_for_update(skip_locked=True).first()
        ours = fast.pick.first(ready)
    assert str(ours.id) == best
    assert fields(ours) == fields(orm)
    assert ours._state.db == orm._state.db and not ours._state.adding


def test_each_queryset_shape_has_its_own_statement(backend):
    backend, fast = backend
    enqueue("default")
    other = enqueue("reports")
    ready = backend.model.objects.ready()
    with transaction.atomic():
        assert str(fast.pick.first(ready.filter(queue_name__in=["reports"])).id) == other
        assert fast.pick.first(ready.filter(queue_name__in=["nothing"])) is None
        assert fast.pick.first(ready.exclude(queue_name__in=["default"])).queue_name == "reports"


def test_the_pick_sees_rows_that_became_ready_since_it_was_compiled(backend):
    import datetime

    from django.utils import timezone

    backend, fast = backend
    ready = backend.model.objects.ready()
    with transaction.atomic():
        assert fast.pick.first(ready) is None
    from tsapp import tasks

    soon = tasks.add.using(run_after=timezone.now() + datetime.timedelta(milliseconds=300)).enqueue(1, 2)
    with transaction.atomic():
        assert fast.pick.first(ready) is None  # not yet
    import time

    time.sleep(0.4)
    with transaction.atomic():
        assert str(fast.pick.first(backend.model.objects.ready()).id) == str(soon.id)  # "now" is fresh


def test_the_pick_skips_rows_locked_by_another_worker(backend):
    from tests.support import pg_connect

    backend, fast = backend
    first = enqueue(priority=5)
    second = enqueue(priority=1)
    table = backend.model._meta.db_table
    from django.db import connection

    with pg_connect(connection.settings_dict["NAME"]) as other:
        other.execute("BEGIN")
        other.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [first])
        with transaction.atomic():
            assert str(fast.pick.first(backend.model.objects.ready()).id) == second
        other.execute("ROLLBACK")


def test_a_claim_writes_what_the_orm_writes_and_sends_the_save_signals(backend):
    from django.db.models import signals

    backend, _fast = backend
    enqueue()
    row = backend.model.objects.get()
    seen = []

    def saw(sender, instance, update_fields, **kwargs):
        seen.append((kwargs.get("created"), sorted(update_fields)))

    signals.pre_save.connect(saw, sender=backend.model)
    signals.post_save.connect(saw, sender=backend.model)
    try:
        row.claim("node:default:0:1")
    finally:
        signals.pre_save.disconnect(saw, sender=backend.model)
        signals.post_save.disconnect(saw, sender=backend.model)
    stored = backend.model.objects.get()
    assert (stored.status, stored.worker_ids, stored.started_at) == ("RUNNING", ["node:default:0:1"], row.started_at)
    assert seen == [(None, ["started_at", "status", "worker_ids"]), (False, ["started_at", "status", "worker_ids"])]


def test_a_held_update_writes_only_while_the_row_is_as_claimed(backend):
    backend, fast = backend
    enqueue()
    row = backend.model.objects.get()
    row.claim("me")
    row.status = "SUCCESSFUL"
    changed = backend.model.objects.get()
    changed.worker_ids = ["me", "other"]
    changed.save(update_fields=["worker_ids"])
    assert not fast.updates.save(row, ["status"], "default", held=True)
    assert backend.model.objects.get().status == "RUNNING"
    row.worker_ids = ["me", "other"]
    assert fast.updates.save(row, ["status"], "default", held=True)
    assert backend.model.objects.get().status == "SUCCESSFUL"


def test_a_claim_of_a_deleted_row_raises_as_save_does(backend):
    from django.db import DatabaseError

    backend, _fast = backend
    enqueue()
    row = backend.model.objects.get()
    backend.model.objects.all().delete()
    with pytest.raises(DatabaseError, match="did not affect any rows"):
        row.claim("me")


def test_a_claiming_pick_claims_in_one_statement_and_the_claim_after_it_writes_nothing(backend):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    backend, _fast = backend
    from django_tasks_db.models import get_date_max

    pick = fastpath.Pick(get_date_max(), claim_as="node:default:0:1")
    enqueue()
    ready = backend.model.objects.ready()
    pick.first(ready)  # compiles
    backend.model.objects.update(status="READY", worker_ids=["earlier"])
    with CaptureQueriesContext(connection) as queries:
        row = pick.first(backend.model.objects.ready())
        row.claim("node:default:0:1")  # what db_worker does next
    assert len(queries) == 1 and queries[0]["sql"].startswith("UPDATE")
    stored = backend.model.objects.get()
    assert (stored.status, stored.worker_ids) == ("RUNNING", ["earlier", "node:default:0:1"])
    assert (row.status, row.worker_ids, row.started_at) == ("RUNNING", stored.worker_ids, stored.started_at)
    assert pick.first(backend.model.objects.ready()) is None  # nothing READY is left


def test_a_claiming_pick_leaves_a_bad_worker_ids_as_it_is_for_rowguard_to_fail(backend):
    backend, _fast = backend
    from django_tasks_db.models import get_date_max

    pick = fastpath.Pick(get_date_max(), claim_as="me")
    enqueue()
    backend.model.objects.update(worker_ids={"not": "a list"})
    row = pick.first(backend.model.objects.ready())
    assert row.worker_ids == {"not": "a list"}
    assert backend.model.objects.get().worker_ids == {"not": "a list"}


def test_a_shape_it_does_not_compile_is_picked_and_claimed_by_the_orm_in_one_transaction(backend):
    backend, _fast = backend
    from django_tasks_db.models import get_date_max

    pick = fastpath.Pick(get_date_max(), claim_as="me")
    enqueue()
    unordered = backend.model.objects.ready().order_by()  # first() would order by pk
    row = pick.first(unordered)
    row.claim("me")
    stored = backend.model.objects.get()
    assert (stored.status, stored.worker_ids) == ("RUNNING", ["me"])
