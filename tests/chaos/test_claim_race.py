"""Children killed between their claim and their first report, with the claim's commit slowed.

A child commits its claim of a row, then reports ``task_started``. Killed in between, it leaves
the row RUNNING, and the supervisor looks the row up by the dead child's worker id. On
PostgreSQL the server finishes a COMMIT its client sent even after the client died, so a slow
commit makes the row RUNNING only after that lookup; the janitor's sweep must then find it within
SWEEP_INTERVAL. Here a deferred constraint trigger sleeps 5 to 50 ms at the commit of each claim
(a managed database with a synchronous standby, or a busy disk), and every child is killed 20 to
250 ms after it appears, over several rounds of a few hundred tasks.

On SQLite the child commits by itself: killed mid-commit, the commit is either complete or rolled
back by the next connection, before the lookup can run, so the race cannot happen there. The run
slows each claim the same way (a trigger calling a sleeping function that a settings module
registers on every connection), which puts most kills inside the claim's transaction, and
checks the same outcome.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from task_supervisor import events
from task_supervisor.chores.janitor import SWEEP_INTERVAL
from task_supervisor.loop.pool import MIN_UPTIME
from tests.chaos.harness import (
    ENQUEUE_BATCH,
    LOST_CLASS,
    Feeder,
    Figures,
    kill,
    live_children,
    rows,
    status_counts,
    unique_node,
    worker_ids_by_pid,
)
from tests.support import PROJECT, Database, SupervisorProcess, config_toml, wait_until

pytestmark = pytest.mark.xdist_group("cpu")  # CPU-heavy: one at a time under xdist (see Makefile)

ROUNDS = 2
TASKS_PER_ROUND = 250
CHILDREN = 4
CHAOS_SECONDS = 4.0  # per round
KILL_AFTER = (0.02, 0.25)  # seconds after a child appears: between its claim and its first report
COMMIT_DELAY = (0.005, 0.05)  # seconds the claim's commit is held
SETTLE_WITHIN = 60.0  # seconds for the last rows to finish once a round's chaos stops (SWEEP_INTERVAL included)
SEED = 19

POOL = f"""
[pools.default]
processes = {CHILDREN}
interval = "100ms"
on_worker_lost = "fail"
max_attempts = 50
"""

EXITS = {events.CHILD_CRASHED, events.CHILD_STOPPED, events.CHILD_RECYCLED, events.CHILD_BOOT_FAILED}


def table() -> str:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult._meta.db_table


def slow_claims_postgres() -> None:
    """A trigger deferred to the commit of every claim (READY to RUNNING) that sleeps there."""
    from django.db import connection

    low, high = COMMIT_DELAY
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION ts_slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_sleep({low} + random() * {high - low});
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER ts_slow_claim AFTER UPDATE ON "{table()}"
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                WHEN (NEW.status = 'RUNNING' AND OLD.status IS DISTINCT FROM 'RUNNING')
                EXECUTE FUNCTION ts_slow_claim();
            """
        )


SQLITE_SETTINGS = """\
import random
import time

from django.db.backends.signals import connection_created

from tsproject.settings import *  # noqa: F403


def _slow_claim(sender, connection, **kwargs):
    if connection.vendor == "sqlite":
        connection.connection.create_function("ts_slow_claim", 0, lambda: time.sleep(random.uniform({low}, {high})))


connection_created.connect(_slow_claim)
"""


def slow_claims_sqlite(tmp_path: Path) -> tuple[str, Path]:
    """A trigger on every claim that calls ``ts_slow_claim()``; the settings that define it."""
    from django.db import connection

    folder = tmp_path / "slow_claim"
    folder.mkdir()
    (folder / "slow_claim_settings.py").write_text(SQLITE_SETTINGS.format(low=COMMIT_DELAY[0], high=COMMIT_DELAY[1]))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE TRIGGER ts_slow_claim AFTER UPDATE OF status ON "{table()}"
            WHEN NEW.status = 'RUNNING' AND OLD.status <> 'RUNNING'
            BEGIN SELECT ts_slow_claim(); END
            """
        )
    return "slow_claim_settings", folder


def config_for(db: Database, tmp_path: Path) -> str:
    text = config_toml(POOL, node=unique_node("race"))
    if db.engine == "postgres":
        slow_claims_postgres()
        return text
    settings, folder = slow_claims_sqlite(tmp_path)
    text = text.replace('settings = "tsproject.settings"', f'settings = "{settings}"')
    return text.replace(f'pythonpath = ["{PROJECT}"]', f'pythonpath = ["{PROJECT}", "{folder}"]')


@dataclass
class EarlyKiller:
    """Kills each child of the supervisor at a random moment 20 to 250 ms after it first appears."""

    sup: SupervisorProcess
    rng: random.Random
    seen: dict[int, float] = field(default_factory=dict)  # pid -> when first seen (monotonic)
    due: dict[int, float] = field(default_factory=dict)  # pid -> when to kill it
    killed: list[int] = field(default_factory=list)

    def look(self, now: float) -> list[int]:
        pids = [child.pid for child in live_children(self.sup)]
        for pid in pids:
            if pid not in self.seen:
                self.seen[pid] = now
                self.due[pid] = now + self.rng.uniform(*KILL_AFTER)
        return pids

    def tick(self, now: float) -> None:
        self.look(now)
        for pid, moment in list(self.due.items()):
            if now >= moment:
                del self.due[pid]
                if kill(pid, signal.SIGKILL):
                    self.killed.append(pid)

    def run(self, seconds: float) -> threading.Thread:
        """Kill for ``seconds`` from a thread of its own, so that feeding tasks never delays a kill."""

        def loop() -> None:
            began = time.monotonic()
            while (now := time.monotonic()) - began < seconds:
                self.tick(now)
                time.sleep(0.002)  # pacing the kills, not waiting for a state

        thread = threading.Thread(target=loop, name="early-killer", daemon=True)
        thread.start()
        return thread

    def children_older_than(self, seconds: float) -> bool:
        """The pool at full strength, each child up long enough that killing it resets its slot's backoff."""
        now = time.monotonic()
        pids = self.look(now)
        return len(pids) == CHILDREN and all(now - self.seen[pid] >= seconds for pid in pids)


def unfinished() -> int:
    counts = status_counts()
    return counts["READY"] + counts["RUNNING"]


def chaos_round(sup: SupervisorProcess, killer: EarlyKiller, feeder: Feeder, target: int) -> float:
    """Feed up to ``target`` tasks under the chaos; seconds from its end until no row is unfinished."""
    # Children that lived past MIN_UPTIME die first: their slots restart without backoff.
    wait_until(
        lambda: killer.children_older_than(MIN_UPTIME + 0.2),
        30,
        message=lambda: f"{CHILDREN} children up for {MIN_UPTIME}s; log:\n{sup.tail()}",
    )
    chaos = killer.run(CHAOS_SECONDS)
    while feeder.sent < target:
        feeder.enqueue(min(ENQUEUE_BATCH, target - feeder.sent))
    chaos.join()
    ended = time.monotonic()
    wait_until(
        lambda: unfinished() == 0,
        SETTLE_WITHIN,
        interval=0.1,
        message=lambda: f"no row READY or RUNNING, have {dict(status_counts())}; log:\n{sup.tail()}",
    )
    return time.monotonic() - ended


def check_rows(feeder: Feeder) -> dict[str, int]:
    """Every row finished: SUCCESSFUL with its result, or FAILED as a lost task that had started."""
    done = list(rows().values("id", "status", "worker_ids", "return_value", "exception_class_path"))
    assert len(done) == feeder.sent
    for r in done:
        assert r["status"] in ("SUCCESSFUL", "FAILED"), r
        assert len(set(r["worker_ids"])) == len(r["worker_ids"]), r  # no worker claimed a row twice
        if r["status"] == "SUCCESSFUL" and str(r["id"]) in feeder.expected:
            assert r["return_value"] == feeder.expected[str(r["id"])], r
        if r["status"] == "FAILED":
            assert r["exception_class_path"] == LOST_CLASS, r
    return {
        "failed": sum(r["status"] == "FAILED" for r in done),
        "claimed_again": sum(len(r["worker_ids"]) - 1 for r in done),
    }


def check_sweeps(sup: SupervisorProcess, killed: set[int]) -> list[dict[str, Any]]:
    """The sweep took only workers we had killed and the loop had seen exit, and put their rows back.

    Returns the verdicts on the rows it took.
    """
    records = sup.events()
    pid_of = {worker_id: pid for pid, worker_id in worker_ids_by_pid(sup.log()).items()}
    swept: set[str] = set()
    for index, record in enumerate(records):
        if record.get("event") != events.LOST_ROWS_FOUND:
            continue
        worker_id = record["worker_id"]
        pid = pid_of[worker_id]
        assert pid in killed, record
        exited = [i for i, r in enumerate(records[:index]) if r.get("pid") == pid and r.get("event") in EXITS]
        assert exited, f"{worker_id} swept before the loop saw its child exit"
        swept.add(worker_id)
    verdicts = [r for r in records if r.get("event") == events.TASK_LOST_HANDLED and r.get("worker_id") in swept]
    assert all(v["status"] == "READY" for v in verdicts), verdicts  # a claim that never started goes back
    return verdicts


def ran_twice(sup: SupervisorProcess) -> set[str]:
    """Tasks put back to READY after they had started in a child that died."""
    started: set[str] = set()
    again: set[str] = set()
    for record in sup.events():
        if record.get("event") == events.TASK_LOST:
            started.add(record["task_id"])
        elif record.get("event") == events.TASK_LOST_HANDLED and record.get("status") == "READY":
            again |= {record["task_id"]} & started
    return again


@pytest.mark.timeout(240)
def test_claims_committed_after_their_child_died_are_recovered_by_the_sweep(supervisor, db: Database, tmp_path):
    figures = Figures("claim race", db.engine, ROUNDS * TASKS_PER_ROUND)
    low, high = (round(x * 1000) for x in COMMIT_DELAY)
    figures.faults = [
        f"commit of each claim held {low}-{high} ms; every child SIGKILLed "
        f"{KILL_AFTER[0] * 1000:.0f}-{KILL_AFTER[1] * 1000:.0f} ms after it appears, {CHAOS_SECONDS:g} s per round"
    ]
    figures.notes = {"rounds": ROUNDS, "sweep_interval_s": SWEEP_INTERVAL, "seed": SEED}
    began = time.monotonic()
    sup = supervisor(config_for(db, tmp_path))
    killer = EarlyKiller(sup, random.Random(SEED))
    feeder = Feeder(ROUNDS * TASKS_PER_ROUND, 1.0)
    settled: list[float] = []
    try:
        for number in range(1, ROUNDS + 1):
            settled.append(chaos_round(sup, killer, feeder, number * TASKS_PER_ROUND))
            figures.children_killed = len(killer.killed)
        assert sup.proc is not None and sup.proc.poll() is None, f"the supervisor died:\n{sup.tail()}"
        counts = check_rows(feeder)
        figures.failed_worker_lost = counts["failed"]
        figures.notes["claimed_again"] = counts["claimed_again"]
        figures.notes["requeued_by_sweep"] = len(check_sweeps(sup, set(killer.killed)))
        again = ran_twice(sup)
        figures.duplicates = len(again)
        assert not again  # under "fail" no task that began runs again
    finally:
        figures.lost = unfinished()  # left READY or RUNNING: must stay 0
        figures.children_killed = len(killer.killed)
        figures.seconds = time.monotonic() - began
        if settled:
            figures.recovery_seconds = {"settled_after_chaos_max": max(settled)}
        figures.report()
