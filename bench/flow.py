"""Claim throughput with and without [limits] declared, on PostgreSQL and SQLite.

    .venv/bin/python bench/flow.py [--tasks N]

One supervisor of 4 children (the tests' project, ``tsapp.tasks.keyed`` with no sleep) takes a
backlog of N tasks over 20 keys, enqueued before it starts, four ways:

- none:      no [limits]: db_worker's own claim, one query;
- other:     a limit declared on another task path: the claim checks the path, nothing more;
- loose:     concurrency = 4 per key over 20 keys with 4 children: every claim locks its key row
             and admits, never refused;
- tight:     concurrency = 1 per key over 2 keys: most claims pass held-back rows.

Throughput is tasks over the time from the first start to the last finish (rows' own stamps), the
best of ``--rounds`` runs per case, the cases taken in turn in each round.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from benchkit import testproject

from tests.support import DatabaseFactory, SupervisorProcess, config_toml, use_database

KEYED = "tsapp.tasks.keyed"
CASES = {
    "none": "",
    "other": '\n[limits."tsapp.tasks.unlimited"]\nconcurrency = 1\n',
    "loose": f'\n[limits."{KEYED}"]\nconcurrency = 4\nkey = "account_id"\n',
    "tight": f'\n[limits."{KEYED}"]\nconcurrency = 1\nkey = "account_id"\n',
}
KEYS = {"none": 20, "other": 20, "loose": 20, "tight": 2}
POOL = '\n[pools.default]\nprocesses = 4\ninterval = "500ms"\n'


def run_case(factory: DatabaseFactory, engine: str, case: str, tasks: int, workdir: Path) -> float:
    from django.db import connections, transaction
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks as t

    db = factory.create(engine)
    use_database(db)
    try:
        with transaction.atomic():
            for n in range(tasks):
                t.keyed.enqueue(f"k{n % KEYS[case]}")
        limits = CASES[case]
        folder = workdir / f"{engine}-{case}"
        folder.mkdir()
        sup = SupervisorProcess(folder, db, config_toml(POOL + limits, node=f"bench-{case}-{uuid.uuid4().hex[:6]}"))
        sup.start()
        try:
            deadline = time.monotonic() + 300
            while DBTaskResult.objects.filter(status="SUCCESSFUL").count() < tasks:
                if time.monotonic() > deadline or sup.proc is None or sup.proc.poll() is not None:
                    raise RuntimeError(f"{engine} {case}: not finished\n{sup.tail()}")
                time.sleep(0.2)
        finally:
            sup.stop()
        first = DBTaskResult.objects.order_by("started_at").values_list("started_at", flat=True).first()
        last = DBTaskResult.objects.order_by("-finished_at").values_list("finished_at", flat=True).first()
        return tasks / max((last - first).total_seconds(), 1e-6)
    finally:
        connections.close_all()
        factory.drop(db)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="backlog per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per case; the best counts (default 3)")
    args = parser.parse_args(argv)
    with testproject.databases("ts-bench-flow-") as (factory, tmp):
        print(f"claim throughput, 4 children, {args.tasks} tasks of {KEYED} (tasks/s, best of {args.rounds})")
        print(f"{'database':<10} " + " ".join(f"{case:>8}" for case in CASES))
        for engine in ("postgres", "sqlite"):
            best = dict.fromkeys(CASES, 0.0)
            for round_ in range(args.rounds):  # rounds interleave the cases, so drifting load hits all alike
                for case in CASES:
                    print(f"  {engine} {case}, round {round_ + 1}...", file=sys.stderr)
                    folder = Path(tmp) / f"{engine}-{round_}"
                    folder.mkdir(exist_ok=True)
                    best[case] = max(best[case], run_case(factory, engine, case, args.tasks, folder))
            print(f"{engine:<10} " + " ".join(f"{f:>8.0f}" for f in best.values()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
