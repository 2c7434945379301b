"""Flow control, decided in-process: limit declarations, the rate window, key arguments, the claim
guard on SQLite and PostgreSQL (one claim at a time, as db_worker makes them), unique tasks."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from task_supervisor.config import ConfigError, config_from_dict
from task_supervisor.wire.limits import FlowLimit, KeyArgument, Rate, key_text, parse_rate, rate_verdict
from task_supervisor.wire.spec import ChildSpec
from tests.support import Database

# -- declarations --------------------------------------------------------------------------------


def load(limits: dict[str, Any]) -> Any:
    return config_from_dict({"django": {"settings": "x"}, "limits": limits}, Path("config.toml"))


def problems(limits: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(limits)
    return caught.value.problems


def test_limits_are_read_per_task_path() -> None:
    config = load({"shop.sync": {"concurrency": 2, "key": "account_id", "rate": "10/s"}, "shop.mail": {"rate": "3/m"}})
    assert config.limits["shop.sync"] == FlowLimit("shop.sync", 2, Rate(10, 1.0), "account_id")
    assert config.limits["shop.mail"] == FlowLimit("shop.mail", None, Rate(3, 60.0), None)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"concurrency": 0}, 'limits."p".concurrency must be an integer of at least 1, got 0.'),
        ({"rate": "ten a second"}, 'limits."p".rate must be a rate such as "10/s"'),
        ({"rate": "5/fortnight"}, 'limits."p".rate must be a rate such as "10/s"'),
        ({"concurrency": 1, "key": "account id"}, 'limits."p".key must be an argument\'s name'),
        ({"key": "a"}, 'limits."p" limits nothing; set concurrency = N'),
        ({"concurency": 1}, 'Unknown key limits."p".concurency; did you mean limits."p".concurrency?'),
    ],
)
def test_bad_declarations_name_the_key(table: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems({"p": table})), problems({"p": table})


def test_rates() -> None:
    assert parse_rate("10/s") == Rate(10, 1.0)
    assert parse_rate("100 / minute") == Rate(100, 60.0)
    assert parse_rate("5/10s") == Rate(5, 10.0)
    assert parse_rate("1000/h") == Rate(1000, 3600.0)
    assert parse_rate("100/d") == Rate(100, 86400.0)
    for bad in ("0/s", "10", "/s", "1.5/s", "10/y", "1/2d", "10001/h"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_limits_travel_to_exec_children_in_the_spec() -> None:
    spec = ChildSpec(
        "p", 0, 1, "n:p:0:1", ("q",), "default", 1.0, None, 1, "s", (), limits=(FlowLimit("a.b", 1, Rate(5, 1.0), "0"),)
    )
    assert ChildSpec.from_json(spec.to_json()) == spec


def test_the_rate_window_never_holds_more_than_its_count() -> None:
    rng = random.Random(7)
    rate = Rate(5, 1.0)
    starts: list[float] = []
    now = 1000.0
    for _ in range(3000):
        now += rng.choice((0.0, 0.001, 0.05, 0.2, 0.3))
        starts, due = rate_verdict(starts, now, rate)
        if due is None:
            starts.append(now)
        else:
            assert due > now
    every = sorted(s for s in starts)
    assert all(b - a > rate.per for a, b in zip(every, every[rate.count :], strict=False))


def test_rate_due_is_one_window_after_the_oldest_counted_start() -> None:
    kept, due = rate_verdict([10.0, 10.5, 20.0], 20.2, Rate(2, 1.0))
    assert kept == [20.0] and due is None
    kept, due = rate_verdict([19.5, 20.0], 20.2, Rate(2, 1.0))
    assert due == pytest.approx(20.5, abs=1e-5)


def test_key_arguments_by_name_position_and_default() -> None:
    def sync(account_id: int, mode: str = "full", *rest: Any, flag: bool = False) -> None: ...

    def with_context(context: Any, account_id: int) -> None: ...

    name = KeyArgument.of(sync, "account_id")
    assert name.value({"args": [7], "kwargs": {}}) == 7
    assert name.value({"args": [], "kwargs": {"account_id": 8}}) == 8
    assert KeyArgument.of(sync, "1").value({"args": [7], "kwargs": {}}) == "full"
    assert KeyArgument.of(sync, "flag").value({"args": [1], "kwargs": {"flag": True}}) is True
    assert KeyArgument.of(with_context, "0", takes_context=True).value({"args": [9], "kwargs": {}}) == 9
    with pytest.raises(ValueError, match=r"no argument 'acount_id'.*account_id, mode, rest, flag"):
        KeyArgument.of(sync, "acount_id")
    with pytest.raises(ValueError, match="no position 2"):
        KeyArgument.of(sync, "2")
    assert key_text("a" * 300).startswith("sha1:") and key_text(5) == "5" and key_text("5") == '"5"'


# -- the claim guard, in-process -----------------------------------------------------------------


class Reports:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, event: str, **fields: Any) -> None:
        self.sent.append({"event": event, **fields})


@pytest.fixture
def limited(db: Database) -> Any:
    """Installs the guard with the limits given; restores the backend's own claim afterwards."""
    from task_supervisor import compat
    from task_supervisor.worker import fastpath, flow, rowguard

    backend = compat.resolve("default")
    reports = Reports()

    def install(*limits: FlowLimit) -> Reports:
        guard = flow.install(backend, limits, reports)
        assert guard is not None
        fastpath.install(backend)  # as a child does: on PostgreSQL the claim writes through it
        rowguard.install(backend.model, pick=guard.pick)
        return reports

    yield install
    rowguard.install(backend.model)
    fastpath.uninstall(backend.model)
    backend.model.claim = getattr(backend.model.claim, "task_supervisor_unwrapped", backend.model.claim)
    backend.signals.task_finished.disconnect(dispatch_uid="task_supervisor_flow_finished")


def claim(worker: str = "n:p:0:1") -> Any:
    """One claim, as db_worker makes it."""
    from django_tasks_db.models import DBTaskResult
    from django_tasks_db.utils import exclusive_transaction

    tasks = DBTaskResult.objects.ready().filter(backend_name="default", queue_name__in=["default"])
    with exclusive_transaction(tasks.db):
        row = tasks.get_locked()
        if row is not None:
            row.claim(worker)
    return row


def finish(row: Any, status: str = "SUCCESSFUL") -> None:
    type(row).objects.filter(pk=row.pk).update(status=status)


def account(row: Any) -> Any:
    return row.args_kwargs["args"][0] if row.args_kwargs["args"] else row.args_kwargs["kwargs"]["account_id"]


@pytest.mark.parametrize("db", ["sqlite", "postgres", "mariadb"], indirect=True)
def test_a_busy_key_is_passed_over_and_freed_when_its_row_stops_running(db: Database, limited: Any) -> None:
    from tsapp import tasks

    reports = limited(FlowLimit("tsapp.tasks.keyed", 1, None, "account_id"))
    a1, a2 = tasks.keyed.enqueue("A"), tasks.keyed.enqueue(account_id="A")
    b1, u, b2 = tasks.keyed.enqueue("B"), tasks.unlimited.enqueue(1), tasks.keyed.enqueue("B")
    first, second, third = claim(), claim(), claim()
    assert [str(r.pk) for r in (first, second, third)] == [a1.id, b1.id, u.id]
    assert claim() is None  # A and B each hold their one slot; a2 and b2 stay READY
    assert reports.sent[-1] == {
        "event": "held",
        "paths": ["tsapp.tasks.keyed"],
        "queues": ["default"],
        "due": None,
        "waiting": True,
        "keys": 2,
        "more": False,
    }
    assert type(first).objects.get(pk=a2.id).status == "READY"
    assert type(first).objects.get(pk=a2.id).worker_ids == []
    finish(second, "FAILED")  # as the janitor records a lost row: the slot is free again
    assert str(claim().pk) == b2.id
    finish(first)
    assert str(claim().pk) == a2.id


def test_concurrency_n_without_key_counts_every_running_row_of_the_path(db: Database, limited: Any) -> None:
    from tsapp import tasks

    limited(FlowLimit("tsapp.tasks.keyed", 2, None, None))
    for key in "ABCD":
        tasks.keyed.enqueue(key)
    rows = [claim(), claim()]
    assert claim() is None
    finish(rows[0])
    assert claim() is not None and claim() is None


@pytest.mark.parametrize("db", ["sqlite", "postgres", "mariadb"], indirect=True)
def test_a_rate_admits_count_starts_per_window_and_stamps_started_at(db: Database, limited: Any) -> None:
    from tsapp import tasks

    reports = limited(FlowLimit("tsapp.tasks.keyed", None, Rate(2, 0.5), "0"))
    for _ in range(3):
        tasks.keyed.enqueue("A")
    other = tasks.keyed.enqueue("B")
    rows = [claim(), claim(), claim()]
    assert str(rows[2].pk) == other.id  # A's third waits for its window, B goes on
    assert claim() is None
    due = reports.sent[-1]["due"]
    assert due == pytest.approx(rows[0].started_at.timestamp() + 0.5, abs=0.01)
    deadline = time.time() + 5
    while (late := claim()) is None and time.time() < deadline:
        time.sleep(0.02)
    assert late is not None and late.started_at.timestamp() >= due
    stored = type(late).objects.get(pk=late.pk).started_at
    assert stored == late.started_at  # the start the rate counted is the row's started_at


def test_rows_of_held_keys_are_left_out_in_sql_so_a_long_backlog_is_passed_at_once(
    db: Database, limited: Any, monkeypatch: Any
) -> None:
    from tsapp import tasks

    from task_supervisor.worker import flow

    monkeypatch.setattr(flow, "SCAN_BATCH", 3)
    monkeypatch.setattr(flow, "SCAN_MAX", 6)
    reports = limited(FlowLimit("tsapp.tasks.keyed", 1, None, "account_id"))
    for n in range(10):
        tasks.keyed.enqueue("A") if n % 2 else tasks.keyed.enqueue(account_id="A")
    free = tasks.unlimited.enqueue(1)
    assert account(claim()) == "A"
    assert str(claim().pk) == free.id  # past nine held-back rows, more than SCAN_MAX
    assert claim() is None and reports.sent[-1]["more"] is False  # all READY rows are A's: known at once


def test_scan_gives_up_after_scan_max_rows_and_says_more(db: Database, limited: Any, monkeypatch: Any) -> None:
    from tsapp import tasks

    from task_supervisor.worker import flow

    monkeypatch.setattr(flow, "SCAN_BATCH", 3)
    monkeypatch.setattr(flow, "SCAN_MAX", 6)
    reports = limited(FlowLimit("tsapp.tasks.keyed", 1, None, "account_id"))
    for _ in range(10):
        tasks.keyed.enqueue(1.5)  # a float key: held back row by row, never left out in SQL
    tasks.unlimited.enqueue(1)
    assert account(claim()) == 1.5
    assert claim() is None and reports.sent[-1]["more"] is True


# -- unique tasks ----------------------------------------------------------------------------------


def test_twenty_threads_enqueueing_one_key_make_one_row(db: Database) -> None:
    from django.db import connections
    from tsapp import tasks

    from task_supervisor import enqueue_unique
    from task_supervisor.models import UniqueTask

    barrier = threading.Barrier(20)
    ids: list[str] = []
    errors: list[BaseException] = []

    def enqueue() -> None:
        try:
            barrier.wait()
            ids.append(str(enqueue_unique(tasks.unlimited, 1, unique_key="rebuild", unique_while="active").id))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=enqueue) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    import traceback

    assert errors == [], "".join(traceback.format_exception(errors[0]))
    from django_tasks_db.models import DBTaskResult

    assert DBTaskResult.objects.filter(task_path="tsapp.tasks.unlimited").count() == 1
    assert set(ids) == {ids[0]} and len(ids) == 20
    assert UniqueTask.objects.get(key="rebuild").task_result_id == ids[0]


def test_unique_scopes(db: Database) -> None:
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks

    from task_supervisor import enqueue_unique

    first = enqueue_unique(tasks.unlimited, 1, unique_key="r", unique_while="ready")
    assert enqueue_unique(tasks.unlimited, 2, unique_key="r", unique_while="ready").id == first.id
    DBTaskResult.objects.filter(pk=first.id).update(status="RUNNING")
    second = enqueue_unique(tasks.unlimited, 3, unique_key="r", unique_while="ready")
    assert second.id != first.id  # "ready": a RUNNING first no longer counts
    active = enqueue_unique(tasks.unlimited, 3, unique_key="a", unique_while="active")
    assert enqueue_unique(tasks.unlimited, 4, unique_key="a").id == active.id
    DBTaskResult.objects.filter(pk=active.id).update(status="RUNNING")
    assert enqueue_unique(tasks.unlimited, 5, unique_key="a").id == active.id
    DBTaskResult.objects.filter(pk=active.id).update(status="FAILED")  # finished or recovered: free
    assert enqueue_unique(tasks.unlimited, 6, unique_key="a").id != active.id
    timed = enqueue_unique(tasks.unlimited, 7, unique_key="t", unique_while="300ms")
    DBTaskResult.objects.filter(pk=timed.id).update(status="SUCCESSFUL")
    assert enqueue_unique(tasks.unlimited, 8, unique_key="t", unique_while="300ms").id == timed.id
    time.sleep(0.4)
    assert enqueue_unique(tasks.unlimited, 9, unique_key="t", unique_while="300ms").id != timed.id
    with pytest.raises(ValueError, match='unique_while must be "ready", "active" or a duration'):
        enqueue_unique(tasks.unlimited, 1, unique_key="x", unique_while="sometimes")


# -- visible: check, why, status, metrics ---------------------------------------------------------------


def test_check_names_unknown_task_paths_and_keys_that_are_no_argument(django_ready: None) -> None:
    from task_supervisor import flowinfo

    limits = {
        "tsapp.tasks.nothing": FlowLimit("tsapp.tasks.nothing", 1),
        "tsapp.tasks.keyed": FlowLimit("tsapp.tasks.keyed", 1, None, "acount_id"),
        "tsapp.tasks.unlimited": FlowLimit("tsapp.tasks.unlimited", 1, None, "3"),
    }
    found = flowinfo.problems(limits)
    assert found[0].startswith("limits.\"tsapp.tasks.nothing\": no task 'tsapp.tasks.nothing' can be imported")
    assert found[1].startswith("limits.\"tsapp.tasks.keyed\".key 'acount_id': the task has no argument 'acount_id'")
    assert found[2].startswith("limits.\"tsapp.tasks.unlimited\".key '3': the task takes 3 positional arguments")
    assert flowinfo.problems({"tsapp.tasks.keyed": FlowLimit("tsapp.tasks.keyed", 1, None, "account_id")}) == []


def test_why_census_status_and_metrics_tell_what_is_held_back(db: Database, limited: Any) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry
    from tsapp import tasks

    from task_supervisor import compat, flowinfo
    from task_supervisor.observe import exposition, statustext
    from task_supervisor.observe.stats import Stats

    limit = FlowLimit("tsapp.tasks.keyed", 1, None, "account_id")
    limited(limit)
    first, held, free = tasks.keyed.enqueue("A"), tasks.keyed.enqueue("A"), tasks.unlimited.enqueue(1)
    assert str(claim().pk) == first.id
    backend = compat.resolve("default")
    limits = {limit.path: limit}
    assert flowinfo.explain(backend, limits, held.id) == (
        f'Task {held.id} is held back by the limit of tsapp.tasks.keyed [account_id="A"] '
        "(concurrency 1 per account_id): concurrency: 1 of 1 running."
    )
    assert "no limit holds it back" in flowinfo.explain(backend, limits, free.id)
    assert "is RUNNING, not READY" in flowinfo.explain(backend, limits, first.id)
    [census] = flowinfo.census(backend, [limit])
    stats = Stats(flow=[census.as_dict()])
    stats.held_claims["default"] = 3
    text = statustext._flow_lines({"limits": stats.flow})
    assert text == [
        "limit tsapp.tasks.keyed: concurrency 1 per account_id; 1 running, 1 held back",
        '  key "A": 1 held back: concurrency: 1 of 1 running',
    ]
    registry = CollectorRegistry()
    registry.register(exposition.SupervisorCollector(lambda: _snapshot(), stats))
    metrics = generate_latest(registry).decode()
    assert 'task_supervisor_limit_held_back{path="tsapp.tasks.keyed"} 1.0' in metrics
    assert 'task_supervisor_limit_key_running{key="\\"A\\"",path="tsapp.tasks.keyed"} 1.0' in metrics
    assert 'task_supervisor_claims_held_back_total{pool="default"} 3.0' in metrics
    assert [line for line in flowinfo.report_lines(backend, limits) if "held back" in line][1] == (
        '  key "A": 1 held back: concurrency: 1 of 1 running.'
    )


def _snapshot() -> dict[str, Any]:
    return {
        "version": "0",
        "node": "n",
        "uptime": 1.0,
        "pools": [],
        "database": {"ok": True},
        "lease": {},
    }


@pytest.mark.parametrize("db", ["mariadb"], indirect=True)
def test_on_mariadb_a_key_row_another_claim_holds_is_passed_not_waited_for(db: Database, limited: Any) -> None:
    """InnoDB keeps row locks past a rollback to savepoint: a claim never waits for a key row there."""
    from django.db import connections, transaction
    from tsapp import tasks

    from task_supervisor.models import FlowKey

    reports = limited(FlowLimit("tsapp.tasks.keyed", 2, None, "account_id"))
    first = tasks.keyed.enqueue("A")
    assert str(claim().pk) == first.id  # the key row of A exists now
    tasks.keyed.enqueue("A")
    free = tasks.unlimited.enqueue(1)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            list(FlowKey.objects.select_for_update().filter(key='"A"'))
            locked.set()
            release.wait(10)
        connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(5)
        started = time.monotonic()
        assert str(claim().pk) == free.id and time.monotonic() - started < 2
        assert claim() is None and reports.sent[-1]["more"] is True
    finally:
        release.set()
        holder.join()
    assert account(claim()) == "A"  # released: A's second slot is taken


def test_tidy_keeps_what_still_counts_and_deletes_the_rest(db: Database, limited: Any) -> None:
    import datetime as dt

    from tsapp import tasks

    from task_supervisor import compat, enqueue_unique, flowinfo
    from task_supervisor.models import FlowKey, UniqueTask

    limit = FlowLimit("tsapp.tasks.keyed", 1, None, "account_id")
    limited(limit)
    tasks.keyed.enqueue("A")
    tasks.keyed.enqueue("B")
    running, done = claim(), claim()
    finish(done)
    other_node = FlowKey.objects.create(limit="elsewhere.task", key="1", holders=[str(running.pk)])
    stale = FlowKey.objects.create(limit="elsewhere.old", key="1")
    FlowKey.objects.filter(pk=stale.pk).update(updated_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    kept = enqueue_unique(tasks.unlimited, 1, unique_key="kept")
    gone = enqueue_unique(tasks.unlimited, 2, unique_key="gone")
    type(running).objects.filter(pk=gone.id).update(status="FAILED")
    backend = compat.resolve("default")
    assert flowinfo.tidy(backend, {limit.path: limit}) == 3  # B's idle key, the stale row, "gone"
    assert sorted(FlowKey.objects.values_list("limit", "key")) == [
        ("elsewhere.task", "1"),  # not declared here, but its holder runs
        ("tsapp.tasks.keyed", '"A"'),
    ]
    assert list(UniqueTask.objects.values_list("key", flat=True)) == ["kept"]
    del other_node, kept


# -- the supervisor's wakes ----------------------------------------------------------------------------


def test_children_waiting_on_limits_are_woken_by_a_finish_or_a_due_start() -> None:
    from task_supervisor.loop.flow import MIN_REWAKE, WAITING_TTL, FlowWakes

    woken: list[tuple[str, float]] = []
    wakes = FlowWakes(lambda queue, now: woken.append((queue, now)))
    held = {"paths": [KEYED_PATH], "queues": ["q"], "due": None, "waiting": True, "more": False}
    wakes.on_held(held, now=10.0, wall=1000.0)
    wakes.on_finished("other.path", 11.0)
    assert woken == [] and wakes.next_due() is None
    wakes.on_finished(KEYED_PATH, 12.0)
    wakes.on_finished(KEYED_PATH, 13.0)  # the woken child claimed and said nothing: still waiting
    assert woken == [("q", 12.0), ("q", 13.0)]
    wakes.on_finished(KEYED_PATH, 10.0 + WAITING_TTL + 1)  # nobody reported for that long
    assert len(woken) == 2 and wakes.waiting == {}
    wakes.on_held({**held, "waiting": False, "due": 1000.4, "queues": ["r"]}, now=20.0, wall=1000.0)
    assert wakes.next_due() == pytest.approx(20.4)
    wakes.tick(20.3)
    assert len(woken) == 2
    wakes.tick(20.4)
    assert woken[-1] == ("r", 20.4) and wakes.next_due() is None
    wakes.on_held({**held, "waiting": False, "due": 990.0}, now=30.0, wall=1000.0)  # clocks apart
    assert wakes.next_due() == pytest.approx(30.0 + MIN_REWAKE)


KEYED_PATH = "tsapp.tasks.keyed"


def test_the_admin_shows_what_each_key_holds_back_and_why_a_task_waits(db: Database, limited: Any) -> None:
    from django.contrib.auth.models import User
    from django.test import Client, override_settings
    from tsapp import tasks

    limited(FlowLimit("tsapp.tasks.keyed", 1, None, "account_id"))
    tasks.keyed.enqueue("A")
    held = [tasks.keyed.enqueue("A"), tasks.keyed.enqueue(account_id="A")]
    claim()
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        page = client.get("/admin/task_supervisor/flowkey/").content.decode()
        answer = client.post(
            "/admin/task_supervisor/taskattempts/",
            {"action": "why_not_taken", "_selected_action": [held[0].id]},
            follow=True,
        ).content.decode()
    assert "concurrency 1 per account_id" in page
    assert '<td class="field-held_back">2</td>' in page
    assert "concurrency: 1 of 1 running" in page
    assert f"Task {held[0].id} is held back by the limit of tsapp.tasks.keyed" in answer


def test_a_reload_that_changes_limits_rolls_every_pool() -> None:
    from task_supervisor.config import PoolConfig
    from task_supervisor.loop.reload import Action, plan

    pools = {"a": PoolConfig("a", ("a",)), "b": PoolConfig("b", ("b",), processes=2)}
    resized = {**pools, "b": PoolConfig("b", ("b",), processes=3)}
    assert [c.action for c in plan(pools, resized)] == [Action.KEEP, Action.RESIZE]
    assert [c.action for c in plan(pools, resized, roll_all=True)] == [Action.ROLL, Action.ROLL]
