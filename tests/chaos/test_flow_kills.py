"""Children SIGKILLed at random during the concurrency run: no slot leaks, the limit holds.

Two supervisors of four children each take 500 tasks over 20 keys with ``concurrency = 1`` per
key and ``on_worker_lost = "requeue"``, while a child of either is killed every 0.1 to 0.5 s. A
child killed mid-task holds its key's slot until its row is recovered; its run lasted until the
kill. Every task must end SUCCESSFUL (a leaked slot would hold its key's tasks back for ever) and
no two runs of one key may overlap, the killed runs included.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.harness import kill, live_children
from tests.realproc.test_flow import (
    CHILDREN,
    CONCURRENCY_ONE,
    KEYS,
    TASKS,
    enqueue_keyed,
    intervals,
    overlaps,
    rows,
    start_two,
)
from tests.support import Database, SupervisorProcess, wait_until

pytestmark = pytest.mark.xdist_group("cpu")  # CPU-heavy: one at a time under xdist (see Makefile)

KILL_EVERY = (0.1, 0.5)  # seconds between kills
REQUEUE = 'on_worker_lost = "requeue"\nmax_attempts = 50'


def test_children_killed_during_the_concurrency_run_leak_no_slot(
    db: Database, supervisor: Callable[..., SupervisorProcess], tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    sups = start_two(supervisor, CONCURRENCY_ONE, REQUEUE)
    rng = random.Random(17)
    deaths: dict[int, float] = {}
    enqueue_keyed(out, TASKS, KEYS, seconds=0.02)
    started = time.monotonic()

    def finished() -> bool:
        for sup in sups:
            assert sup.proc is not None and sup.proc.poll() is None, f"a supervisor died:\n{sup.tail()}"
        if rows().filter(status="SUCCESSFUL").count() < TASKS * 0.9:
            victims = [c for sup in sups for c in live_children(sup)]
            if victims:
                victim = rng.choice(victims).pid
                deaths[victim] = time.time()  # before the signal: the run ended no later
                if not kill(victim):
                    del deaths[victim]
            time.sleep(rng.uniform(*KILL_EVERY))
        return rows().filter(status="SUCCESSFUL").count() == TASKS

    wait_until(
        finished,
        120,
        interval=0.05,
        message=lambda: f"all {TASKS} SUCCESSFUL; statuses {sorted(set(rows().values_list('status', flat=True)))}",
    )
    found = intervals(out, deaths)
    assert {key: overlaps(runs) for key, runs in found.items() if overlaps(runs)} == {}
    attempts = list(rows().values_list("worker_ids", flat=True))
    requeued = sum(1 for ids in attempts if len(ids) > 1)
    print(
        f"\n[{db.engine}] {TASKS} tasks over {KEYS} keys, concurrency 1, 2 x {CHILDREN} children: "
        f"{len(deaths)} children SIGKILLed, {requeued} tasks requeued, all finished in "
        f"{time.monotonic() - started:.1f}s, no two runs of a key overlapped"
    )
    assert deaths and requeued, "no child was killed mid-task: the run proves nothing"
