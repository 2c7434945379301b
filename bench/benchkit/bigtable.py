"""The supervisor with a million finished rows in the task table, against the same on an empty one.

Finished rows pile up wherever nobody prunes them: the claim, the supervisor's housekeeping and
its figures must not slow down as they do. One supervisor session measures noop throughput and
pickup latency on the empty table, fills it in one INSERT ... SELECT (as bench/dashboard.py
does: one row in 33 FAILED, spread over the last 7 days, in the queue the workers claim from),
measures again, then empties it and measures once more: the empty table's samples and runs are
split between before and after, so that load drifting over the figure weighs on both sides.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace

from benchkit import database
from benchkit.database import BenchError, Database
from benchkit.measure import Distribution, Throughput

STATES = ("empty", "filled", "emptied")  # in this order; "emptied" adds to the "empty" figures

SPAN_S = 7 * 86400  # finished rows spread over this many seconds before now

FILL = {  # PG_FINISHED_ROWS's expressions: two task paths, one queue
    "task_path": "CASE WHEN g %% 2 = 0 THEN 'benchapp.tasks.noop' ELSE 'benchapp.tasks.work_10ms' END",
    "worker_ids": """'["bench-history"]'::jsonb""",
    "queue": "'default'",
}


@dataclass(frozen=True, slots=True)
class TableFigures:
    rows: int  # finished rows in the table besides the measured ones
    latencies: tuple[float, ...] = ()  # milliseconds, every pickup latency sample
    runs: tuple[Throughput, ...] = ()  # every noop throughput run

    @property
    def complete(self) -> bool:
        """Both figures have something: not so when the step before the fill failed."""
        return bool(self.latencies and self.runs)

    @property
    def latency(self) -> Distribution:
        return Distribution.of(list(self.latencies))

    @property
    def throughput(self) -> Throughput:
        """The best run: the one least disturbed by anything else on the machine."""
        return max(self.runs, key=lambda run: run.per_second)

    def add(self, latencies: list[float], runs: list[Throughput]) -> TableFigures:
        return replace(self, latencies=(*self.latencies, *latencies), runs=(*self.runs, *runs))


def share(total: int, state: str) -> int:
    """How many of ``total`` samples (or runs) ``state`` takes: the empty table's are split
    between before the fill and after, the first half taking the odd one."""
    if state == "filled":
        return total
    first = (total + 1) // 2
    return first if state == "empty" else total - first


def figure_key(state: str) -> str:
    return "filled" if state == "filled" else "empty"


def fill(db: Database, rows: int) -> datetime.datetime:
    """``rows`` finished rows, every one enqueued before the moment returned; then VACUUM ANALYZE.

    VACUUM as well as ANALYZE: a million inserted rows wake autovacuum, which would otherwise
    run during the measurement; this leaves the table as autovacuum would.
    """
    from django.db import connections
    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    if db.engine != "postgres":
        raise BenchError("the big table figure runs on PostgreSQL")
    database.activate(db)
    connection = connections[db.alias]
    table = connection.ops.quote_name(DBTaskResult._meta.db_table)
    filled_before = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(database.PG_FINISHED_ROWS.format(table=table, **FILL), {"rows": rows, "step": SPAN_S / rows})
        cursor.execute(f"VACUUM (ANALYZE) {table}")
    return filled_before
