"""The concurrency run, with children SIGKILLed at random: the limit holds, no slot leaks, and the
unlimited tasks in the same queue are not slowed.

Two supervisors of four children each take 500 tasks over 20 keys with ``concurrency = 1`` per
key (half passing the key by position, half by name) and 100 tasks of an unlimited path among
them in the same queue, ``on_worker_lost = "requeue"``, while a child of either is killed every
0.1 to 0.5 s until 90% are done. A child killed mid-task holds its key's slot until its row is
recovered; its run lasted until the kill. Every task must end SUCCESSFUL (a leaked slot would hold
its key's tasks back for ever), no two runs of one key may overlap (from the start and end stamps
the tasks write, the killed runs included), held-back rows are never claimed and given back (a row
has more than one worker id only if a child running it was killed), and the unlimited tasks wait no
longer than the limited ones around them. One run serves both proofs, to keep the suite short.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.harness import kill, live_children
from tests.realproc.test_flow import (
    CHILDREN,
    CONCURRENCY_ONE,
    KEYED,
    KEYS,
    TASKS,
    UNLIMITED,
    enqueue_keyed,
    intervals,
    overlaps,
    rows,
    start_two,
    waits,
)
from tests.support import Database, SupervisorProcess, wait_until

pytestmark = pytest.mark.xdist_group("cpu")  # CPU-heavy: one at a time under xdist (see Makefile)

KILL_EVERY = (0.1, 0.5)  # seconds between kills
REQUEUE = 'on_worker_lost = "requeue"\nmax_attempts = 50'


def test_concurrency_one_per_key_with_children_killed_leaks_no_slot(
    db: Database, supervisor: Callable[..., SupervisorProcess], tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    sups = start_two(supervisor, CONCURRENCY_ONE, REQUEUE)
    rng = random.Random(17)
    deaths: dict[int, float] = {}
    enqueue_keyed(out, TASKS, KEYS, UNLIMITED, seconds=0.01)
    started = time.monotonic()

    def finished() -> bool:
        for sup in sups:
            assert sup.proc is not None and sup.proc.poll() is None, f"a supervisor died:\n{sup.tail()}"
        if rows().filter(status="SUCCESSFUL").count() < (TASKS + UNLIMITED) * 0.9:
            victims = [c for sup in sups for c in live_children(sup)]
            if victims:
                victim = rng.choice(victims).pid
                deaths[victim] = time.time()  # before the signal: the run ended no later
                if not kill(victim):
                    del deaths[victim]
            time.sleep(rng.uniform(*KILL_EVERY))
        return rows().filter(status="SUCCESSFUL").count() == TASKS + UNLIMITED

    wait_until(
        finished,
        120,
        interval=0.05,
        message=lambda: f"all SUCCESSFUL; statuses {sorted(set(rows().values_list('status', flat=True)))}",
    )
    found = intervals(out, deaths)
    assert sorted(found) == sorted(f"acct{k}" for k in range(KEYS))
    assert {key: overlaps(runs) for key, runs in found.items() if overlaps(runs)} == {}
    attempts = list(rows().values_list("worker_ids", flat=True))
    requeued = sum(1 for ids in attempts if len(ids) > 1)
    assert requeued <= len(deaths)  # held-back rows were passed over, never claimed and given back
    assert len({ids[-1].split(":")[0] for ids in attempts}) == 2  # both nodes took tasks
    keyed, free = waits(KEYED), waits("tsapp.tasks.unlimited")
    print(
        f"\n[{db.engine}] {TASKS} tasks over {KEYS} keys (concurrency 1) + {UNLIMITED} unlimited, "
        f"2 x {CHILDREN} children: {len(deaths)} children SIGKILLed, {requeued} tasks requeued, all "
        f"finished in {time.monotonic() - started:.1f}s, no two runs of a key overlapped; median wait "
        f"keyed {statistics.median(keyed):.3f}s, unlimited {statistics.median(free):.3f}s"
    )
    assert deaths and requeued, "no child was killed mid-task: the run proves nothing"
    # In one FIFO queue with the keyed rows, the unlimited rows wait no longer than the keyed rows
    # around them: none waits behind a held-back row.
    assert statistics.median(free) <= statistics.median(keyed) * 1.5 + 0.5
