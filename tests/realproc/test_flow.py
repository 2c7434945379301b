"""Flow control with real processes: two supervisors of four children each on one database.

Every run of ``tsapp.tasks.keyed`` appends "start <t> <pid>" and "end <t> <pid>" to its key's log,
so the intervals each key's tasks ran in are read from what the tasks themselves wrote.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from task_supervisor import events
from tests.support import Database, SupervisorProcess, config_toml, wait_until

KEYED = "tsapp.tasks.keyed"
CHILDREN = 4
KEYS = 20
TASKS = 500
UNLIMITED = 100


def pool(extra: str = "", interval: str = "500ms") -> str:
    return f"""
[pools.default]
processes = {CHILDREN}
interval = "{interval}"
{extra}
"""


# Children that poll this seldom are fast only if the supervisor wakes them (a slot freed, a start due).
SLOW_POLL = "5s"


def start_two(
    supervisor: Callable[..., SupervisorProcess], limits: str, extra: str = "", interval: str = "500ms"
) -> list[SupervisorProcess]:
    # Nodes named afresh: their control sockets must not meet those of a test running alongside (xdist).
    run = uuid.uuid4().hex[:6]
    sups = [supervisor(config_toml(pool(extra, interval) + limits, node=f"flow-{run}-{n}")) for n in "ab"]
    for sup in sups:
        sup.wait_event(events.CHILD_READY, count=CHILDREN)
    return sups


def rows() -> Any:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.all()


def wait_finished(total: int, sups: list[SupervisorProcess], timeout: float) -> None:
    def done() -> bool:
        for sup in sups:
            assert sup.proc is not None and sup.proc.poll() is None, f"a supervisor died:\n{sup.tail()}"
        return rows().filter(status="SUCCESSFUL").count() == total

    wait_until(
        done,
        timeout,
        interval=0.2,
        message=lambda: (
            f"{total} SUCCESSFUL, have {list(rows().values_list('status', flat=True))[:50]}\n{sups[0].tail()}"
        ),
    )


def intervals(out: Path, deaths: dict[int, float] | None = None) -> dict[str, list[tuple[float, float, int]]]:
    """Per key, the (start, end, pid) of every run its log shows; a run whose child was killed before
    it logged its end lasted until the kill (``deaths``: pid -> time of the SIGKILL)."""
    found: dict[str, list[tuple[float, float, int]]] = {}
    for log in sorted(out.glob("key-*.log")):
        open_runs: dict[int, float] = {}
        runs = found.setdefault(log.stem.removeprefix("key-"), [])
        for line in log.read_text().splitlines():
            word, at, pid = line.split()
            if word == "start":
                assert int(pid) not in open_runs, f"{log}: pid {pid} started twice without an end"
                open_runs[int(pid)] = float(at)
            else:
                runs.append((open_runs.pop(int(pid)), float(at), int(pid)))
        for pid, start in open_runs.items():
            assert deaths is not None and pid in deaths, f"{log}: pid {pid} started at {start} and never ended"
            runs.append((start, deaths[pid], pid))
    return found


def overlaps(runs: list[tuple[float, float, int]]) -> list[tuple[Any, Any]]:
    ordered = sorted(runs)
    return [(a, b) for a, b in itertools.pairwise(ordered) if b[0] < a[1]]


def enqueue_keyed(out: Path, tasks: int, keys: int, unlimited: int = 0, seconds: float = 0.01) -> None:
    """``tasks`` keyed tasks over ``keys`` keys, half passing the key by position, half by name, with an
    unlimited task after every few; all in one transaction, so they appear at once."""
    from django.db import transaction
    from tsapp import tasks as t

    every = tasks // unlimited if unlimited else 0
    with transaction.atomic():
        for n in range(tasks):
            key = f"acct{n % keys}"
            if n % 2:
                t.keyed.enqueue(key, str(out), seconds)
            else:
                t.keyed.enqueue(account_id=key, out=str(out), seconds=seconds)
            if every and n % every == every - 1:
                t.unlimited.enqueue(n, str(out))


def waits(path: str) -> list[float]:
    return [(s - e).total_seconds() for s, e in rows().filter(task_path=path).values_list("started_at", "enqueued_at")]


CONCURRENCY_ONE = f"""
[limits."{KEYED}"]
concurrency = 1
key = "account_id"
"""


def test_a_busy_key_does_not_block_the_queue_behind_it(
    db: Database, supervisor: Callable[..., SupervisorProcess], tmp_path: Path
) -> None:
    from tsapp import tasks as t

    hot = [t.keyed.enqueue("hot", "", 0.5) for _ in range(6)]
    free = [t.unlimited.enqueue(n) for n in range(40)]
    sups = start_two(supervisor, CONCURRENCY_ONE, interval=SLOW_POLL)
    wait_until(lambda: rows().filter(pk__in=[r.id for r in free], status="SUCCESSFUL").count() == 40, 30)
    hot_rows = rows().filter(pk__in=[r.id for r in hot])
    assert hot_rows.filter(status="READY").count() >= 2  # the hot key still has a backlog...
    assert all(ids == [] for ids in hot_rows.filter(status="READY").values_list("worker_ids", flat=True))
    wait_finished(46, sups, 30)  # ...which runs one at a time, after every unlimited task finished
    starts = sorted(hot_rows.values_list("started_at", flat=True))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # One at a time (0.5 s each), and each next one started when the previous finished, not at
    # the next 5 s poll; under a loaded machine a start came 2.2 s after the one before.
    assert all(0.5 <= gap < 4.0 for gap in gaps), gaps


RATE = f"""
[limits."{KEYED}"]
rate = "5/s"
key = "0"
"""


def test_rate_five_per_second_per_key_and_one_unique_task(
    db: Database, supervisor: Callable[..., SupervisorProcess], tmp_path: Path
) -> None:
    from tsapp import tasks as t

    out = tmp_path / "runs"
    out.mkdir()
    from django.db import transaction

    with transaction.atomic():
        for n in range(36):
            t.keyed.enqueue(f"r{n % 3}", str(out))
    sups = start_two(supervisor, RATE, interval=SLOW_POLL)
    wait_finished(36, sups, 60)
    by_key: dict[str, list[float]] = defaultdict(list)
    for args_kwargs, started in rows().values_list("args_kwargs", "started_at"):
        by_key[args_kwargs["args"][0]].append(started.timestamp())
    densest = 0
    for key, starts in by_key.items():
        starts.sort()
        densest = max(densest, *(sum(1 for s in starts if a <= s <= a + 1.0) for a in starts))
        crowded = [(a, b) for a, b in zip(starts, starts[5:], strict=False) if b - a <= 1.0]
        assert crowded == [], f"{key}: 6 starts within 1 s: {crowded}"
        span = starts[-1] - starts[0]
        # 12 starts at 5/s need 2 s and a bit: children polling every 5 s made it only if woken when due.
        assert span < 4.0, f"{key}: 12 starts at 5/s took {span:.2f}s: children waited past the due starts"
    stamped = {k: sorted(r[0] for r in runs) for k, runs in intervals(out).items()}
    most = max(sum(1 for s in st if a <= s < a + 1.0) for st in stamped.values() for a in st)
    held = sum(sup.status()["flow"]["held_claims"] for sup in sups)
    print(
        f"\n[{db.engine}] rate 5/s, 3 keys x 12 tasks: most starts of a key in one closed 1 s window"
        f" by started_at {densest}; by the tasks' own stamps {most}; claims that found nothing eligible: {held}"
    )
    # No polling in a tight loop: 8 children idle ~2.2 s, woken when a start is due.
    assert held < 150
    unique_against_running_supervisors(sups)


def unique_against_running_supervisors(sups: list[SupervisorProcess]) -> None:
    """20 threads enqueue one unique key at once while both supervisors run: one row, one run."""
    from django.db import connections
    from tsapp import tasks as t

    from task_supervisor import enqueue_unique

    barrier = threading.Barrier(20)
    ids: list[str] = []

    def enqueue() -> None:
        try:
            barrier.wait()
            ids.append(str(enqueue_unique(t.keyed, "u", "", 1.0, unique_key="rebuild", unique_while="active").id))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=enqueue) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 20 and len(set(ids)) == 1
    assert rows().filter(args_kwargs__args__0="u").count() == 1
    wait_until(lambda: rows().filter(pk=ids[0], status="SUCCESSFUL").exists(), 20)
    after = enqueue_unique(t.keyed, "u", unique_key="rebuild", unique_while="active")
    assert str(after.id) != ids[0]  # the first finished: the key is free again


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the declarations; the census runs on both in unit tests
def test_check_refuses_bad_limits_naming_the_key_and_shows_what_keys_hold_back(db: Database, tmp_path: Path) -> None:
    from task_supervisor import exitcodes
    from tests.realproc.test_cli_errors import run_cli

    bad = (
        f'[limits."{KEYED}"]\nconcurrency = 1\nkey = "acount_id"\n'
        '[limits."tsapp.tasks.nothing"]\nrate = "5/s"\n'
        '[limits."tsapp.tasks.unlimited"]\nconcurrency = 0\n'
    )
    result = run_cli(tmp_path, "check", config_toml(pool() + bad), **db.env)
    assert result.returncode == exitcodes.EX_CHECK_FAILED and "Traceback" not in result.stderr
    assert 'limits."tsapp.tasks.unlimited".concurrency must be an integer of at least 1, got 0.' in result.stderr
    bad = bad.replace("concurrency = 0", "concurrency = 2")
    result = run_cli(tmp_path, "check", config_toml(pool() + bad), **db.env)
    assert result.returncode == exitcodes.EX_CHECK_FAILED and "Traceback" not in result.stderr
    assert f"limits.\"{KEYED}\".key 'acount_id': the task has no argument 'acount_id'" in result.stderr
    assert "limits.\"tsapp.tasks.nothing\": no task 'tsapp.tasks.nothing' can be imported" in result.stderr
    from tsapp import tasks as t

    from task_supervisor.models import FlowKey

    waiting = t.keyed.enqueue("A")
    running = t.keyed.enqueue("A")
    rows().filter(pk=running.id).update(status="RUNNING")
    FlowKey.objects.create(limit=KEYED, key='"A"', holders=[running.id])
    result = run_cli(tmp_path, "check", config_toml(pool() + CONCURRENCY_ONE), **db.env)
    assert result.returncode == exitcodes.EX_OK, result.stderr
    assert f"Limit {KEYED}: concurrency 1 per account_id; 1 running, 1 held back." in result.stdout
    assert '  key "A": 1 held back: concurrency: 1 of 1 running.' in result.stdout
    why = subprocess.run(
        [sys.executable, "-m", "task_supervisor", "why", "-c", str(tmp_path / "config.toml"), waiting.id, running.id],
        env={**os.environ, **db.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert why.returncode == exitcodes.EX_OK, why.stderr
    assert why.stdout.splitlines() == [
        f'Task {waiting.id} is held back by the limit of {KEYED} [account_id="A"] (concurrency 1 per account_id): '
        "concurrency: 1 of 1 running.",
        f"Task {running.id} is RUNNING, not READY.",
    ]
