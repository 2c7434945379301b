"""The janitor's sweep: which rows it takes, what it records for them, and when it runs.

The decisions run on a janitor whose database calls are replaced; the SQL that picks rows by
their last worker id runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from task_supervisor.chores import janitor as janitor_module
from task_supervisor.chores import recovery
from task_supervisor.chores.janitor import SWEEP_AFTER_EXIT, SWEEP_IDLE_INTERVAL, SWEEP_INTERVAL, Janitor
from task_supervisor.chores.recovery import LostTask
from task_supervisor.config import config_from_dict

NODE = "n1"


@dataclass
class FakeBackend:
    package: str = "django_tasks_db"
    db_alias: str = "default"


@dataclass
class FakeDatabase:
    """What the janitor's chores would read and write, recorded."""

    running: set[str] = field(default_factory=set)  # last worker ids of RUNNING rows
    sweeps: list[set[str]] = field(default_factory=list)  # the ``exclude`` of each sweep
    finished: list[LostTask] = field(default_factory=list)

    def running_worker_ids(self, backend: Any, prefix: str, exclude: Any = ()) -> set[str]:
        self.sweeps.append(set(exclude))
        return {w for w in self.running if w.startswith(prefix) and w not in exclude}

    def finish(self, backend: Any, lost: LostTask, policy_for: Any, rng: Any) -> list:
        self.finished.append(lost)
        self.running.discard(lost.worker_id)
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_janitor(monkeypatch: pytest.MonkeyPatch, policy: str = "fail") -> tuple[Janitor, FakeDatabase, Clock]:
    database = FakeDatabase()
    monkeypatch.setattr(recovery, "heartbeats_installed", lambda: False)
    monkeypatch.setattr(recovery, "running_worker_ids", database.running_worker_ids)
    monkeypatch.setattr(recovery, "finish", database.finish)
    monkeypatch.setattr(recovery, "ready_by_queue", lambda backend: [])
    data = {
        "django": {"settings": "tsproject.settings"},
        "supervisor": {"node": NODE, "http": ""},
        "pools": {"default": {"processes": 2, "on_worker_lost": policy, "max_attempts": 7}},
    }
    config = config_from_dict(data, Path("config.toml"))
    clock = Clock()
    janitor = Janitor(config, {"default": FakeBackend()}, clock, rng=random.Random(1))  # type: ignore[dict-item]
    return janitor, database, clock


@pytest.fixture(autouse=True)
def _django(django_ready: None) -> None:
    """The janitor reads Django's clock and app registry."""


def exit_of(janitor: Janitor, worker_id: str) -> None:
    """The loop hands the janitor a dead child's loss, as it does for every exit."""
    janitor.lost("default", LostTask(worker_id, None, "it died", on_worker_lost="requeue", max_attempts=7))


def test_a_row_claimed_after_its_childs_exit_was_handled_goes_back_to_ready_whatever_the_policy(monkeypatch):
    janitor, _, _ = make_janitor(monkeypatch, policy="fail")
    exit_of(janitor, "n1:default:0:1")
    lost = janitor.swept_loss("n1:default:0:1", "unused {worker_id}")
    assert lost.on_worker_lost == "requeue" and lost.max_attempts == 7 and lost.task_id is None
    assert "exited before starting it" in lost.message and "committed only after" in lost.message


def test_a_worker_that_never_exited_under_this_supervisor_gets_the_pools_policy(monkeypatch):
    janitor, _, _ = make_janitor(monkeypatch, policy="fail")
    lost = janitor.swept_loss("n1:default:1:4", "The worker ({worker_id}) is gone.")
    assert lost.on_worker_lost == "fail" and lost.max_attempts == 7
    assert lost.message == "The worker (n1:default:1:4) is gone."


def test_the_sweep_leaves_live_children_and_pending_losses_alone(monkeypatch):
    janitor, database, _ = make_janitor(monkeypatch)
    live = {"n1:default:0:5", "n1:default:1:6"}
    database.running = {"n1:default:0:5", "n1:default:1:2", "n1:default:1:3", "other:default:0:1"}
    exit_of(janitor, "n1:default:1:3")  # its loss is still queued when the sweep looks
    janitor._sweep(live, "gone {worker_id}")
    assert database.sweeps == [live | {"n1:default:1:3"}]
    swept = [item for _, item in janitor.pending][1:]
    assert [lost.worker_id for lost in swept] == ["n1:default:1:2"]
    assert swept[0].message == "gone n1:default:1:2"


def test_the_sweep_never_takes_a_live_childs_row_even_if_the_query_returned_it(monkeypatch):
    janitor, _, _ = make_janitor(monkeypatch)
    monkeypatch.setattr(recovery, "running_worker_ids", lambda backend, prefix, exclude=(): {"n1:default:0:5"})
    janitor._sweep({"n1:default:0:5"}, "gone {worker_id}")
    assert not janitor.pending


def test_the_sweep_runs_every_interval_after_an_exit_and_seldom_otherwise(monkeypatch):
    janitor, database, clock = make_janitor(monkeypatch)
    live = {"n1:default:0:1"}
    janitor.tick(clock.now, live, ["default"])
    assert len(database.sweeps) == 1
    assert janitor.next_due() == pytest.approx(clock.now + SWEEP_IDLE_INTERVAL)  # no child exited
    exit_of(janitor, "n1:default:0:0")
    janitor.tick(clock.now, live, ["default"])  # its loss finished
    assert janitor.next_due() == pytest.approx(clock.now + SWEEP_INTERVAL)  # pulled in by the exit
    clock.now += SWEEP_INTERVAL / 2
    janitor.tick(clock.now, live, ["default"])
    assert len(database.sweeps) == 1
    while clock.now < janitor.last_exit_at + SWEEP_AFTER_EXIT:
        clock.now = janitor.next_due()
        janitor.tick(clock.now, live, ["default"])
    assert len(database.sweeps) == 1 + SWEEP_AFTER_EXIT / SWEEP_INTERVAL  # every SWEEP_INTERVAL till then
    assert janitor.next_due() == pytest.approx(clock.now + SWEEP_IDLE_INTERVAL)


def test_a_swept_row_is_finished_on_the_next_turn_with_the_unstarted_verdict(monkeypatch):
    janitor, database, clock = make_janitor(monkeypatch, policy="fail")
    exit_of(janitor, "n1:default:0:1")
    janitor.tick(clock.now, {"n1:default:0:2"}, ["default"])  # its loss finished: nothing RUNNING yet
    assert [lost.worker_id for lost in database.finished] == ["n1:default:0:1"]
    database.running.add("n1:default:0:1")  # the claim's commit lands only now
    clock.now += SWEEP_INTERVAL
    janitor.tick(clock.now, {"n1:default:0:2"}, ["default"])
    assert janitor.next_due() <= clock.now  # queued: the loop comes straight back
    janitor.tick(clock.now, {"n1:default:0:2"}, ["default"])
    second = database.finished[-1]
    assert len(database.finished) == 2 and second.worker_id == "n1:default:0:1"
    assert second.on_worker_lost == "requeue" and "exited before starting it" in second.message


def test_recover_own_is_a_sweep_that_postpones_the_next_one(monkeypatch):
    janitor, database, clock = make_janitor(monkeypatch)
    database.running = {"n1:default:0:3"}
    janitor.recover_own(set())
    (lost,) = [item for _, item in janitor.pending]
    assert "was gone when its supervisor restarted on node n1" in lost.message
    assert lost.on_worker_lost == "fail"
    assert janitor.next_sweep == clock.now + SWEEP_INTERVAL


def test_flush_at_exit_finishes_what_is_pending_and_never_sweeps(monkeypatch):
    janitor, database, clock = make_janitor(monkeypatch)
    database.running = {"n1:default:0:9"}  # a child that outlived the stop may still run this
    exit_of(janitor, "n1:default:0:1")
    janitor.flush(clock.now + 1.0)
    assert [lost.worker_id for lost in database.finished] == ["n1:default:0:1"]
    assert database.sweeps == []


def test_exits_remembered_are_bounded(monkeypatch):
    janitor, _, _ = make_janitor(monkeypatch)
    monkeypatch.setattr(janitor_module, "EXITS_KEPT", 3)
    for generation in range(1, 6):
        exit_of(janitor, f"n1:default:0:{generation}")
    assert list(janitor.exited) == ["n1:default:0:3", "n1:default:0:4", "n1:default:0:5"]


# -- the heartbeat, which renews the lease, in an attempt of its own -----------------------


def beating_janitor(monkeypatch: pytest.MonkeyPatch, beat_fails: bool) -> tuple[Janitor, list[float], Clock]:
    """A janitor with heartbeats on, whose every lost row the database refuses to finish."""
    janitor, _, clock = make_janitor(monkeypatch)
    janitor.heartbeats = True
    beats: list[float] = []

    def beat(node: str, pools: list[str], started_at: Any, backend: Any, *more: Any) -> list:
        if beat_fails:
            raise RuntimeError("connection refused")
        beats.append(clock.now)
        return []

    def refuse(backend: Any, lost: LostTask, policy_for: Any, rng: Any) -> list:
        raise RuntimeError("lock wait timeout exceeded")

    monkeypatch.setattr(recovery, "beat", beat)
    monkeypatch.setattr(recovery, "finish", refuse)
    monkeypatch.setattr(recovery, "dead_nodes", lambda timeout, own: [])
    exit_of(janitor, "n1:default:0:1")
    return janitor, beats, clock


def test_a_lost_row_that_keeps_failing_never_holds_back_the_heartbeat(monkeypatch):
    janitor, beats, clock = beating_janitor(monkeypatch, beat_fails=False)
    interval = janitor.config.supervisor.beat_interval
    start = clock.now
    while clock.now < start + 60:
        janitor.tick(clock.now, {"n1:default:0:2"}, ["default"])
        clock.now = max(janitor.next_due(), clock.now + 0.1)
    # The chores back off to RETRY_MAX and the row stays pending, yet the lease is renewed on time.
    assert janitor.pending and not janitor.db_ok and janitor.retry_delay == janitor_module.RETRY_MAX
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert beats[0] == start and max(gaps) <= interval + 0.1, gaps
    assert janitor.lease_sent_at == beats[-1]


def test_a_heartbeat_that_fails_backs_off_and_holds_the_other_chores(monkeypatch):
    janitor, beats, clock = beating_janitor(monkeypatch, beat_fails=True)
    finished: list[LostTask] = []
    monkeypatch.setattr(recovery, "finish", lambda backend, lost, policy_for, rng: finished.append(lost) or [])
    janitor.tick(clock.now, set(), ["default"])
    assert not beats and janitor.lease_sent_at is None and not janitor.db_ok
    assert not finished and janitor.pending  # the database is down: the row waits, it is not lost
    assert janitor.next_beat == janitor.retry_at > clock.now


def test_a_turn_that_sends_the_beat_leaves_the_chores_to_the_next_turn_at_once(monkeypatch):
    """At most one call that may block per turn: the loop is held for one time box, not two."""
    janitor, beats, clock = beating_janitor(monkeypatch, beat_fails=False)
    finished: list[LostTask] = []
    monkeypatch.setattr(recovery, "finish", lambda backend, lost, policy_for, rng: finished.append(lost) or [])
    monkeypatch.setattr(recovery, "running_worker_ids", lambda backend, prefix, exclude=(): set())
    monkeypatch.setattr(janitor, "_measure_queues", lambda: None)
    monkeypatch.setattr(janitor, "_operator_chores", lambda now, live: None)
    monkeypatch.setattr(janitor_module.cancels, "requested", lambda backend, worker_id: False)
    janitor.tick(clock.now, set(), ["default"])
    assert beats == [clock.now] and not finished
    assert janitor.next_due() <= clock.now  # the chores are due: the loop turns again at once
    janitor.tick(clock.now, set(), ["default"])
    assert beats == [clock.now] and [lost.worker_id for lost in finished] == ["n1:default:0:1"]


# -- the SQL, on SQLite and PostgreSQL -----------------------------------------------------


def make_rows(statuses_and_ids: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    from tsapp import tasks

    made = {}
    for name, (status, worker_ids) in statuses_and_ids.items():
        result = tasks.noop.enqueue()
        tasks_model().objects.filter(id=result.id).update(status=status, worker_ids=worker_ids)
        made[name] = str(result.id)
    return made


def tasks_model() -> Any:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult


ROWS = {
    "mine": ("RUNNING", ["n1:default:0:1"]),
    "mine_requeued": ("RUNNING", ["other:default:0:1", "n1:default:1:2"]),
    "live": ("RUNNING", ["n1:default:0:3"]),
    "taken_by_other": ("RUNNING", ["n1:default:0:4", "other:default:0:2"]),
    "longer_node_name": ("RUNNING", ["n10:default:0:1"]),
    "dotted_lookalike": ("RUNNING", ["nX1:default:0:5"]),
    "finished": ("SUCCESSFUL", ["n1:default:0:6"]),
    "ready": ("READY", []),
    "odd": ("RUNNING", {"n1:default:0:7": 1}),
}


def test_running_worker_ids_picks_the_last_worker_in_sql(db):
    from task_supervisor.compat import resolve

    make_rows(ROWS)
    backend = resolve("default")
    found = recovery.running_worker_ids(backend, "n1:", exclude={"n1:default:0:3"})
    assert found == {"n1:default:0:1", "n1:default:1:2"}
    assert recovery.running_worker_ids(backend, "n1:") == {"n1:default:0:1", "n1:default:1:2", "n1:default:0:3"}
    assert recovery.running_worker_ids(backend, "n.1:") == set()  # a dot in a name is no wildcard
    picked = recovery.last_worker_in(tasks_model().objects.all(), ["n1:default:0:1", "other:default:0:2"])
    assert picked.count() == 2  # "mine" and "taken_by_other", by their last worker only


def test_finish_takes_only_the_rows_the_dead_worker_holds_last(db):
    from task_supervisor.compat import resolve

    ids = make_rows(
        {**ROWS, "mine_too": ("RUNNING", ["n1:default:0:1"]), "was_mine": ("RUNNING", ["n1:default:0:1", "x"])}
    )
    lost = LostTask("n1:default:0:1", None, "gone", on_worker_lost="requeue", max_attempts=5)
    outcomes = recovery.finish(resolve("default"), lost, lambda path: None, random.Random(1))
    assert sorted(o.task_id for o in outcomes) == sorted([ids["mine"], ids["mine_too"]])
    statuses = dict(tasks_model().objects.values_list("id", "status"))
    assert {name for name, pk in ids.items() if statuses[pk_of(pk)] == "READY"} == {"mine", "mine_too", "ready"}


def pk_of(text: str) -> Any:
    import uuid

    return uuid.UUID(text)
