"""What an idle supervisor costs PostgreSQL: transactions a second, whole node and per child.

    .venv/bin/python bench/idle_load.py [--children 1 4 8] [--seconds 20]

For each N, starts `task-supervisor run` with one pool of N children on the benchmark's project
(its config: interval 1 s, persistent connections, heartbeats; bench/README.md), waits until
every child is idle and a few seconds more, and reads the database's committed and rolled-back
transactions (`pg_stat_database`) before and after ``--seconds`` of idleness. The driver's own two
reads are taken out. Bare db_worker is the yardstick: N of them, idle, over the same window.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchkit import database, harness
from benchkit.database import Database
from benchkit.signals import interrupt_on_term

SETTLE_S = 3.0  # seconds of quiet after the workers are up, before the window opens


def transactions(db: Database) -> int:
    """Committed and rolled-back transactions of the benchmark's database so far (one of ours)."""
    from django.db import connections

    with connections[db.alias].cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(cursor.fetchone()[0])


def idle_rate(workers: harness.Workers, seconds: float) -> float:
    """Transactions a second made by ``workers`` while idle."""
    time.sleep(SETTLE_S)
    first = transactions(workers.db)
    time.sleep(seconds)
    last = transactions(workers.db)
    # The driver's own: the two reads (autocommit, one transaction each after the first), and
    # the statistics reach pg_stat_database up to a second late, the same at both ends.
    return max(0, last - first - 2) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    interrupt_on_term()
    rows = []
    with harness.Workspace() as workspace, database.postgres_database() as postgres:
        sqlite = database.sqlite_database(workspace.path)
        database.setup_django(postgres, sqlite)
        database.migrate(postgres)
        for n in args.children:
            for kind, workers in (
                ("bare", harness.BareWorkers(postgres, n, workspace.path, f"idle-bare-{n}")),
                ("supervisor", harness.Supervised(postgres, n, workspace.path, f"idle-sup-{n}")),
            ):
                print(f"{kind} N={n}...", file=sys.stderr, flush=True)
                with workers:
                    rows.append((kind, n, idle_rate(workers, args.seconds)))
    print(f"idle transactions a second on PostgreSQL, {args.seconds:g} s windows")
    print(f"{'workers':<12} {'N':>3} {'total':>8} {'per worker':>11}")
    for kind, n, rate in rows:
        print(f"{kind:<12} {n:>3} {rate:8.2f} {rate / n:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
