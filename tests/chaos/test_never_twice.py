"""A task never runs twice at once (issue 13): partitions, frozen supervisors, skewed clocks, hung children.

Two supervisors on two nodes, ``a`` and ``b``, share one database with ``node_timeout = "10s"``
(heartbeats every 2.5 s). A long ``interval_task`` runs on ``a`` and appends a start and an end
line (pid, wall and monotonic time) for each execution to a file; the test breaks ``a`` and
checks, from that file, that no two executions overlap in time, that the row's final state is
the one its last owner wrote, and that ``a``'s child was stopped by ``a``'s lease (its
``lease_expired`` event) before ``b`` recovered the row, not by luck. A thread samples the row
and the executions' processes throughout (``Watch``): the state transitions seen, and when a
run that wrote no end line was last alive.

- Partition: ``a``'s database traffic goes through ``FaultProxy``, which blackholes it for well
  over ``node_timeout``; ``b`` declares ``a`` dead and recovers the row; the proxy heals.
- Frozen supervisor: SIGSTOP ``a``'s supervisor alone; its child stops its own task when its
  lease runs out; ``b`` recovers; SIGCONT: ``a`` carries on. A short freeze, over before any
  other node may recover the row, must not strand it: ``a`` finishes it itself.
- Skewed clocks: ``a`` runs 5 minutes ahead and ``b`` 5 minutes behind (libfaketime, monotonic
  clocks left true); neither is declared dead while both live, and a dead ``a`` is recovered
  within node_timeout and a heartbeat.
- Hung children: a SIGSTOPped child, idle or busy, is replaced; a busy one's row goes through
  ``on_worker_lost``.

Executions are compared on the monotonic clock, which every process of the machine shares and
libfaketime leaves alone. The skew runs on PostgreSQL only: on SQLite the "database's clock" is
that of the process running the statement (SQLite computes ``now`` in-process), which is one
machine's clock for every node that shares the file, so skew between them is no real fault; faked
per process, the node ahead would declare the other dead at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from task_supervisor import events
from task_supervisor.wire.control import LEASE_GRACE, LEASE_MARGIN
from tests.chaos.harness import LOST_CLASS, Figures, kill, rows, wait_gone
from tests.chaos.proxy import FaultProxy
from tests.support import PG_HOST, PG_PORT, Database, SupervisorProcess, config_toml, wait_until

pytestmark = pytest.mark.timeout(150)
POSTGRES = pytest.mark.parametrize("db", ["postgres"], indirect=True)

NODE_TIMEOUT = 10.0  # seconds; the shortest the config accepts
BEAT = NODE_TIMEOUT / 4  # seconds between heartbeats (SupervisorConfig.beat_interval)
# Seconds after a node's last heartbeat within which another node recovers its rows: the
# heartbeat must be node_timeout old, and the other node looks at each of its own heartbeats.
RECOVERED_WITHIN = NODE_TIMEOUT + BEAT
SLACK = 3.0  # seconds of scheduling delay allowed on a busy two-core machine
LONG = 40.0  # seconds a task on ``a`` would run if nothing stopped it
RERUN = 2.0  # seconds a rerun of it takes
BLACKHOLE = 14.0  # seconds the proxy swallows ``a``'s traffic: well over node_timeout
SHORT_FREEZE = 7.5  # seconds: past the lease's margin, before another node may recover
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
SKEW = 300  # seconds each node's wall clock is off, ahead on ``a``, behind on ``b``
SKEW_WATCH = 2 * NODE_TIMEOUT  # seconds both skewed nodes run side by side
HUNG_WITHIN = 2 * 1.0 + 1.0 + SLACK  # stopped at two OS checks 1 s apart, plus a check's phase
POLL = 0.05  # seconds between the watch's samples


# -- the nodes ------------------------------------------------------------------------------


def node_config(node: str, policy: str, queues: tuple[str, ...] = ("default",), processes: int = 1) -> str:
    pools = f"""
[pools.default]
queues = {json.dumps(list(queues))}
processes = {processes}
interval = "200ms"
on_worker_lost = "{policy}"
max_attempts = 3
"""
    return config_toml(pools, node=node, extra=f'node_timeout = "{NODE_TIMEOUT:g}s"')


def start_node(supervisor: Any, node: str, policy: str, **kwargs: Any) -> SupervisorProcess:
    env = kwargs.pop("env", {})
    sup = supervisor(node_config(node, policy, **kwargs), **env)
    for slot in range(kwargs.get("processes", 1)):
        sup.wait_ready("default", slot, timeout=40)
    return sup


def enqueue_interval(path: Path, queue: str = "default", seconds: float = LONG) -> str:
    from tsapp import tasks

    return str(tasks.interval_task.using(queue_name=queue).enqueue(str(path), seconds, RERUN).id)


def wall(record: dict[str, Any]) -> float:
    """The wall time of a log record."""
    return datetime.fromisoformat(record["time"]).timestamp()


def wall_to_mono(record: dict[str, Any]) -> float:
    """A log record's wall time on this machine's monotonic clock (for nodes whose clock is true)."""
    return wall(record) - time.time() + time.monotonic()


def heartbeat(node: str) -> Any:
    from task_supervisor.models import NodeHeartbeat

    return NodeHeartbeat.objects.filter(node=node).values_list("last_seen", flat=True).first()


def wait_beats(node: str, count: int, timeout: float) -> None:
    """Until ``node`` wrote ``count`` more heartbeats (a chores turn with no error, each)."""
    seen = [heartbeat(node)]

    def beaten() -> bool:
        now = heartbeat(node)
        if now is not None and now != seen[-1]:
            seen.append(now)
        return len(seen) > count

    wait_until(beaten, timeout, message=f"{count} heartbeats of node {node}")


def fenced(sup: SupervisorProcess, task_id: str) -> list[dict[str, Any]]:
    return sup.events(events.TASK_FENCED, task_id=task_id)


# What a node did about the lease and the task, in order: the "story" in a run's figures.
STORY = (
    events.LEASE_LOST,
    events.LEASE_EXPIRED,
    events.TASK_FENCED,
    events.CHILD_CRASHED,
    events.CHILD_KILLED,
    events.TASK_LOST,
    events.DEAD_NODE,
    events.TASK_LOST_HANDLED,
    events.LEASE_RENEWED,
)


def story(sup: SupervisorProcess) -> list[str]:
    return [r["event"] for r in sup.events() if r.get("event") in STORY]


def still_alive(sup: SupervisorProcess) -> None:
    assert sup.proc is not None and sup.proc.poll() is None, f"node's supervisor exited:\n{sup.tail()}"


# -- executions and the row, as they happened ----------------------------------------------


@dataclass(frozen=True)
class Run:
    """One execution of the task: its process and its monotonic start and end."""

    pid: int
    start: float
    end: float  # inf: no end line and the process still alive
    ended: str  # "end line", "process gone" or "running"


def read_runs(path: Path, gone: dict[int, float]) -> list[Run]:
    runs: list[Run] = []
    started: dict[int, float] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for word, pid, _wall, mono in (line.split() for line in lines):
        if word == "start":
            started[int(pid)] = float(mono)
        elif int(pid) in started:
            runs.append(Run(int(pid), started.pop(int(pid)), float(mono), "end line"))
    for pid, start in started.items():
        end = gone.get(pid, math.inf)
        runs.append(Run(pid, start, end, "process gone" if end < math.inf else "running"))
    return sorted(runs, key=lambda r: r.start)


def overlap_seconds(runs: list[Run]) -> float:
    """Seconds during which two executions ran at once, summed over every pair."""
    total = 0.0
    for i, first in enumerate(runs):
        for second in runs[i + 1 :]:
            total += max(0.0, min(first.end, second.end) - max(first.start, second.start))
    return total


def describe(status: str, worker_ids: list[str], exception: str) -> str:
    owner = worker_ids[-1].split(":", 1)[0] if worker_ids else "-"
    if status in ("RUNNING", "SUCCESSFUL"):
        return f"{status} on {owner} (attempt {len(worker_ids)})"
    if status == "FAILED":
        return f"FAILED {exception.rsplit('.', 1)[-1]}"
    return status


@dataclass
class Watch:
    """Samples the task's row and its executions' processes every POLL seconds, from a thread."""

    task_id: str
    path: Path
    transitions: list[str] = field(default_factory=list)
    gone: dict[int, float] = field(default_factory=dict)  # pid -> monotonic moment first seen gone
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.is_set():
                self.sample()
                self.stop.wait(POLL)
        finally:
            connection.close()

    def sample(self) -> None:
        found = rows().filter(id=self.task_id).values_list("status", "worker_ids", "exception_class_path").first()
        if found is not None:
            label = describe(*found)
            if not self.transitions or self.transitions[-1] != label:
                self.transitions.append(label)
        for run in read_runs(self.path, self.gone):
            if run.ended == "running" and not _alive(run.pid):
                self.gone[run.pid] = time.monotonic()

    def runs(self) -> list[Run]:
        return read_runs(self.path, self.gone)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def watching(task_id: str, path: Path) -> Iterator[Watch]:
    watch = Watch(task_id, path)
    thread = threading.Thread(target=watch.run, name="watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(10)
        watch.sample()


def wait_started(watch: Watch, count: int, sup: SupervisorProcess, timeout: float = 30) -> list[Run]:
    return wait_until(
        lambda: len(runs := watch.runs()) >= count and runs,
        timeout,
        message=lambda: f"{count} executions of the task; log:\n{sup.tail()}",
    )


def row(task_id: str) -> dict[str, Any]:
    return rows().filter(id=task_id).values("status", "worker_ids", "exception_class_path", "traceback").get()


def lost_count() -> int:
    return rows().exclude(status__in=("SUCCESSFUL", "FAILED")).count()


def stopped_by_lease(sup: SupervisorProcess, task_id: str, pid: int) -> dict[str, Any]:
    """The child's own lease_expired record for the task: it stopped the task itself."""
    return sup.wait_event(events.LEASE_EXPIRED, timeout=NODE_TIMEOUT + SLACK, task_id=task_id, pid=pid)


# -- 1. partition ---------------------------------------------------------------------------


@POSTGRES
@pytest.mark.parametrize("policy", ["fail", "requeue"])
def test_partition_stops_the_task_before_another_node_recovers_it(supervisor, db: Database, tmp_path, policy):
    began = time.monotonic()
    path = tmp_path / "runs"
    with FaultProxy(PG_HOST, PG_PORT) as proxy:
        a = start_node(supervisor, "a", policy, env={"TS_DB_PORT": str(proxy.port)})
        task_id = enqueue_interval(path)
        with watching(task_id, path) as watch:
            [first] = wait_started(watch, 1, a)
            b = start_node(supervisor, "b", policy)
            assert row(task_id)["worker_ids"][0].startswith("a:")

            cut = time.time()
            proxy.blackhole()
            lease_lost = a.wait_event(events.LEASE_LOST, timeout=NODE_TIMEOUT)
            expired = stopped_by_lease(a, task_id, first.pid)
            dead = b.wait_event(events.DEAD_NODE, timeout=RECOVERED_WITHIN + SLACK, node="a")
            recovered = b.wait_event(events.TASK_LOST_HANDLED, timeout=10, task_id=task_id)
            wait_until(lambda: time.time() >= cut + BLACKHOLE, BLACKHOLE + 1)  # the fault lasts this long
            proxy.restore()
            healed = time.time()
            renewed = a.wait_event(events.LEASE_RENEWED, timeout=30)
            if policy == "requeue":
                wait_until(lambda: row(task_id)["status"] == "SUCCESSFUL", 30, message=lambda: b.tail())
            wait_beats("a", 2, timeout=30)  # a's chores ran after the heal: whatever it had to write is written
            still_alive(a)
            still_alive(b)
        runs = watch.runs()

    final = row(task_id)
    a_run = next(r for r in runs if r.pid == first.pid)
    assert a_run.ended == "end line", runs  # LeaseExpired stopped it; nothing had to kill it
    # a's execution ended before b recovered the row: stopped by the lease, as it was lost.
    assert a_run.end < wall_to_mono(recovered), (runs, recovered)
    assert wall(expired) <= wall(lease_lost) + LEASE_GRACE + SLACK, (expired, lease_lost)
    # The lease's design: stopped at least LEASE_MARGIN - LEASE_GRACE before anyone may recover.
    assert wall(recovered) - wall(expired) >= LEASE_MARGIN - LEASE_GRACE, (expired, recovered)
    assert overlap_seconds(runs) == 0.0, runs
    assert recovered["status"] == ("FAILED" if policy == "fail" else "READY"), recovered
    if policy == "fail":
        assert final["status"] == "FAILED" and final["exception_class_path"] == LOST_CLASS, final
        assert "belonged to node a" in final["traceback"], final["traceback"]
        assert len(final["worker_ids"]) == 1 and len(runs) == 1, (final, runs)
        assert watch.transitions[-1] == "FAILED WorkerLost", watch.transitions
    else:
        assert final["status"] == "SUCCESSFUL" and len(final["worker_ids"]) == 2, final
        assert len(runs) == 2 and runs[1].start >= wall_to_mono(recovered), runs
    a_fenced = fenced(a, task_id)
    assert [(r.get("status"), r.get("owner")) for r in a_fenced] == [("RUNNING", None)], a_fenced  # refused: no lease
    # Its verdict refused, the worker left: a's supervisor counted the task lost, to finish it by
    # a conditional update (nothing, since b had recovered it).
    assert a.has_event(events.TASK_LOST, task_id=task_id, pid=first.pid), story(a)
    assert lost_count() == 0

    Figures(
        test=f"partition, {policy}",
        database=db.engine,
        tasks=1,
        faults=[f"blackhole node a's database traffic for {BLACKHOLE:g}s (node_timeout {NODE_TIMEOUT:g}s)"],
        lost=lost_count(),
        duplicates=len(runs) - 1,
        failed_worker_lost=rows().filter(exception_class_path=LOST_CLASS).count(),
        recovery_seconds={
            "a_lease_lost_after_cut": wall(lease_lost) - cut,
            "a_task_stopped_after_cut": wall(expired) - cut,
            "b_declared_a_dead_after_cut": wall(dead) - cut,
            "b_recovered_row_after_cut": wall(recovered) - cut,
            "stopped_before_recovery_by": wall(recovered) - wall(expired),
            "a_lease_renewed_after_heal": wall(renewed) - healed,
        },
        seconds=time.monotonic() - began,
        notes={
            "overlap_seconds": overlap_seconds(runs),
            "fenced_writes": len(a_fenced),
            "executions": len(runs),
            "transitions": watch.transitions,
            "a_story": story(a),
            "b_story": story(b),
        },
    ).report()


# -- 2. frozen supervisor -------------------------------------------------------------------


@contextmanager
def frozen(sup: SupervisorProcess) -> Iterator[float]:
    """The supervisor alone SIGSTOPped (its children run on) for the block; yields the wall time."""
    sup.signal(signal.SIGSTOP)
    try:
        yield time.time()
    finally:
        sup.signal(signal.SIGCONT)


@pytest.mark.parametrize("db", ["sqlite", "postgres"], indirect=True)
def test_frozen_supervisor_its_child_stops_its_own_task(supervisor, db: Database, tmp_path):
    began = time.monotonic()
    path = tmp_path / "runs"
    a = start_node(supervisor, "a", "fail", queues=("default", "a-only"))
    task_id = enqueue_interval(path)
    with watching(task_id, path) as watch:
        [first] = wait_started(watch, 1, a)
        b = start_node(supervisor, "b", "fail")
        wait_beats("a", 1, timeout=NODE_TIMEOUT)
        time.sleep(BEAT / 2)  # freeze between two rounds of a's chores, not inside one
        with frozen(a) as stopped:
            expired = stopped_by_lease(a, task_id, first.pid)
            dead = b.wait_event(events.DEAD_NODE, timeout=RECOVERED_WITHIN + SLACK, node="a")
            recovered = b.wait_event(events.TASK_LOST_HANDLED, timeout=10, task_id=task_id)
            wait_until(lambda: time.time() >= stopped + NODE_TIMEOUT + BEAT, RECOVERED_WITHIN)  # frozen this long
        resumed = time.time()
        renewed = a.wait_event(events.LEASE_RENEWED, timeout=20)
        from tsapp import tasks

        later = str(tasks.noop.using(queue_name="a-only").enqueue().id)
        wait_until(lambda: row(later)["status"] == "SUCCESSFUL", 30, message=lambda: a.tail())
        wait_beats("a", 2, timeout=30)
        still_alive(a)
        still_alive(b)
    runs = watch.runs()

    final = row(task_id)
    assert final["status"] == "FAILED" and final["exception_class_path"] == LOST_CLASS, final
    assert "belonged to node a" in final["traceback"] and len(final["worker_ids"]) == 1, final
    assert watch.transitions[-1] == "FAILED WorkerLost", watch.transitions
    assert row(later)["worker_ids"][0].startswith("a:")  # a carries on
    assert len(runs) == 1 and runs[0].ended == "end line" and runs[0].end < wall_to_mono(recovered), runs
    a_fenced = fenced(a, task_id)
    assert [(r.get("status"), r.get("owner")) for r in a_fenced] == [("RUNNING", None)], a_fenced
    assert a.has_event(events.TASK_LOST, task_id=task_id, pid=first.pid), story(a)
    assert lost_count() == 0

    Figures(
        test="frozen supervisor",
        database=db.engine,
        tasks=2,
        faults=[f"SIGSTOP node a's supervisor (not its children) for {resumed - stopped:.1f}s"],
        lost=lost_count(),
        duplicates=len(runs) - 1,
        failed_worker_lost=rows().filter(exception_class_path=LOST_CLASS).count(),
        recovery_seconds={
            "a_child_stopped_its_task_after_freeze": wall(expired) - stopped,
            "b_declared_a_dead_after_freeze": wall(dead) - stopped,
            "b_recovered_row_after_freeze": wall(recovered) - stopped,
            "stopped_before_recovery_by": wall(recovered) - wall(expired),
            "a_lease_renewed_after_resume": wall(renewed) - resumed,
        },
        seconds=time.monotonic() - began,
        notes={
            "overlap_seconds": overlap_seconds(runs),
            "fenced_writes": len(a_fenced),
            "executions": len(runs),
            "transitions": watch.transitions,
            "a_story": story(a),
            "b_story": story(b),
        },
    ).report()


@POSTGRES
def test_short_freeze_leaves_no_row_behind(supervisor, db: Database, tmp_path):
    """Frozen past the lease's margin but not past node_timeout: the child stops its task, no
    other node may recover the row yet, and the node, once thawed, finishes it itself."""
    began = time.monotonic()
    path = tmp_path / "runs"
    a = start_node(supervisor, "a", "fail")
    task_id = enqueue_interval(path)
    with watching(task_id, path) as watch:
        [first] = wait_started(watch, 1, a)
        wait_beats("a", 1, timeout=NODE_TIMEOUT)
        with frozen(a) as stopped:
            expired = stopped_by_lease(a, task_id, first.pid)
            wait_until(lambda: time.time() >= stopped + SHORT_FREEZE, SHORT_FREEZE + 1)  # frozen this long
        resumed = time.time()
        handled = a.wait_event(events.TASK_LOST_HANDLED, timeout=NODE_TIMEOUT + SLACK, task_id=task_id)
        still_alive(a)
    runs = watch.runs()

    final = row(task_id)
    assert final["status"] == "FAILED" and final["exception_class_path"] == LOST_CLASS, final
    assert len(runs) == 1 and runs[0].ended == "end line", runs
    assert lost_count() == 0
    Figures(
        test="short freeze",
        database=db.engine,
        tasks=1,
        faults=[f"SIGSTOP node a's supervisor for {resumed - stopped:.1f}s (node_timeout {NODE_TIMEOUT:g}s)"],
        lost=lost_count(),
        failed_worker_lost=1,
        recovery_seconds={
            "a_child_stopped_its_task_after_freeze": wall(expired) - stopped,
            "a_finished_row_after_resume": wall(handled) - resumed,
        },
        seconds=time.monotonic() - began,
        notes={
            "overlap_seconds": overlap_seconds(runs),
            "fenced_writes": len(fenced(a, task_id)),
            "transitions": watch.transitions,
            "a_story": story(a),
        },
    ).report()


# -- 3. skewed clocks -----------------------------------------------------------------------


def skewed(seconds: int) -> dict[str, str]:
    """Environment for a node whose wall clock is ``seconds`` off; monotonic clocks stay true."""
    return {"LD_PRELOAD": FAKETIME, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def heartbeat_ages() -> dict[str, float]:
    """Each node's heartbeat age in seconds by the database's clock."""
    from django.db.models.functions import Now

    from task_supervisor.models import NodeHeartbeat

    found = NodeHeartbeat.objects.annotate(db_now=Now()).values_list("node", "last_seen", "db_now")
    return {node: (now - seen).total_seconds() for node, seen, now in found}


@POSTGRES
def test_skewed_clocks_neither_look_dead_and_a_dead_node_is_recovered(supervisor, db: Database, tmp_path):
    if not Path(FAKETIME).exists():
        pytest.fail(f"{FAKETIME} is missing: apt-get install faketime")
    began = time.monotonic()
    a = start_node(supervisor, "a", "fail", queues=("default", "a-only"), env=skewed(SKEW))
    b = start_node(supervisor, "b", "fail", env=skewed(-SKEW))
    a_skew = wall(a.events(events.SUPERVISOR_STARTED)[0]) - time.time()
    b_skew = wall(b.events(events.SUPERVISOR_STARTED)[0]) - time.time()
    assert abs(a_skew - SKEW) < 60 and abs(b_skew + SKEW) < 60, (a_skew, b_skew)

    from tsapp import tasks

    side_by_side = time.monotonic()
    oldest = 0.0
    done: list[str] = []
    while time.monotonic() < side_by_side + SKEW_WATCH:  # an observation window, not a wait
        assert not a.has_event(events.DEAD_NODE) and not b.has_event(events.DEAD_NODE), (a.tail(), b.tail())
        ages = heartbeat_ages()
        if {"a", "b"} <= set(ages):
            oldest = max(oldest, *ages.values())
        done.append(str(tasks.add.enqueue(len(done), 1).id))
        time.sleep(0.5)  # pacing the observation
    assert oldest < BEAT + SLACK, oldest  # stamped by the database's clock, not 5 minutes off
    wait_until(lambda: rows().filter(id__in=done, status="SUCCESSFUL").count() == len(done), 30)
    ran_on = {w[0].split(":")[0] for w in rows().filter(id__in=done).values_list("worker_ids", flat=True)}

    path = tmp_path / "runs"
    task_id = enqueue_interval(path, queue="a-only")
    wait_until(path.exists, 30, message=lambda: a.tail())
    pod = [a.pid, *(c.pid for c in a.children())]
    killed = time.time()
    for pid in pod:
        kill(pid)
    wait_gone(pod, 10)
    dead = b.wait_event(events.DEAD_NODE, timeout=RECOVERED_WITHIN + SLACK, node="a")
    recovered = b.wait_event(events.TASK_LOST_HANDLED, timeout=10, task_id=task_id)
    still_alive(b)
    final = row(task_id)
    assert final["status"] == "FAILED" and final["exception_class_path"] == LOST_CLASS, final
    dead_after = wall(dead) + SKEW - killed  # b's log runs SKEW behind
    assert dead_after <= RECOVERED_WITHIN + SLACK, dead_after
    assert lost_count() == 0

    Figures(
        test="skewed clocks",
        database=db.engine,
        tasks=len(done) + 1,
        children_killed=len(pod) - 1,
        faults=[f"node a's clock +{SKEW}s, node b's -{SKEW}s for {SKEW_WATCH:g}s", "SIGKILL node a and its children"],
        lost=lost_count(),
        failed_worker_lost=1,
        recovery_seconds={
            "b_declared_a_dead_after_kill": dead_after,
            "b_recovered_row_after_kill": wall(recovered) + SKEW - killed,
        },
        seconds=time.monotonic() - began,
        notes={
            "dead_node_events_while_alive": 0,
            "oldest_heartbeat_seen_s": round(oldest, 2),
            "short_tasks_ran_on": sorted(ran_on),
            "skew_seen_in_logs_s": [round(a_skew), round(b_skew)],
            "overlap_seconds": 0.0,
        },
    ).report()


# -- 4. hung children -----------------------------------------------------------------------


def replaced(sup: SupervisorProcess, slot: int, old: int) -> int | None:
    """The pid of a ready child in ``slot`` other than ``old``."""
    for pool in sup.status().get("pools", []):
        for child in pool["children"]:
            if child["slot"] == slot and child["pid"] != old and child["state"] in ("idle", "busy"):
                return int(child["pid"])
    return None


@pytest.mark.parametrize("db", ["sqlite", "postgres"], indirect=True)
def test_stopped_children_are_replaced_and_a_busy_ones_row_handled(supervisor, db: Database, tmp_path):
    began = time.monotonic()
    a = start_node(supervisor, "a", "fail", processes=2)
    idle = a.wait_ready("default", 0)["pid"]
    stopped = time.time()
    os.kill(idle, signal.SIGSTOP)
    hung = a.wait_event(events.CHILD_HUNG, timeout=HUNG_WITHIN + SLACK, pid=idle)
    successor = wait_until(lambda: replaced(a, 0, idle), 20, 0.1, message=lambda: a.tail())
    up_again = time.time()
    wait_gone([idle], 10)

    path = tmp_path / "runs"
    task_id = enqueue_interval(path)
    with watching(task_id, path) as watch:
        [run] = wait_started(watch, 1, a)
        busy_stopped = time.time()
        os.kill(run.pid, signal.SIGSTOP)
        busy_hung = a.wait_event(events.CHILD_HUNG, timeout=HUNG_WITHIN + SLACK, pid=run.pid)
        handled = a.wait_event(events.TASK_LOST_HANDLED, timeout=10, task_id=task_id)
        wait_gone([run.pid], 10)
    final = row(task_id)
    assert final["status"] == "FAILED" and final["exception_class_path"] == LOST_CLASS, final
    assert "hung" in final["traceback"], final["traceback"]
    assert wall(hung) - stopped <= HUNG_WITHIN and wall(busy_hung) - busy_stopped <= HUNG_WITHIN
    assert lost_count() == 0

    Figures(
        test="hung children",
        database=db.engine,
        tasks=1,
        children_killed=2,
        faults=["SIGSTOP an idle child", "SIGSTOP a busy child"],
        lost=lost_count(),
        failed_worker_lost=1,
        recovery_seconds={
            "idle_hung_after_stop": wall(hung) - stopped,
            "idle_replaced_after_stop": up_again - stopped,
            "busy_hung_after_stop": wall(busy_hung) - busy_stopped,
            "busy_row_handled_after_stop": wall(handled) - busy_stopped,
        },
        seconds=time.monotonic() - began,
        notes={"successor_pid_differs": successor != idle, "transitions": watch.transitions},
    ).report()
