"""The supervisor with a million finished rows in the task table, against the same on an empty one.

Finished rows pile up wherever nobody prunes them: the claim, the supervisor's housekeeping and
its figures must not slow down as they do. The same supervisor session measures noop throughput
and pickup latency on the empty table, then fills it in one INSERT ... SELECT (as
bench/dashboard.py does: one row in 33 FAILED, spread over the last 7 days, in the queue the
workers claim from) and measures again.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from benchkit import database
from benchkit.database import BenchError, Database
from benchkit.measure import Distribution, Throughput

SPAN_S = 7 * 86400  # finished rows spread over this many seconds before now

FILL = """
INSERT INTO {table} (id, status, enqueued_at, started_at, finished_at, args_kwargs, priority, task_path,
                     worker_ids, queue_name, backend_name, run_after, return_value, exception_class_path, traceback)
SELECT gen_random_uuid(), CASE WHEN g %% 33 = 0 THEN 'FAILED' ELSE 'SUCCESSFUL' END,
       now() - make_interval(secs => g * %(step)s + 1), now() - make_interval(secs => g * %(step)s),
       now() - make_interval(secs => g * %(step)s - 0.01), '{{"args": [], "kwargs": {{}}}}'::jsonb, 0,
       CASE WHEN g %% 2 = 0 THEN 'benchapp.tasks.noop' ELSE 'benchapp.tasks.work_10ms' END,
       '["bench-history"]'::jsonb, 'default', 'default', '9999-01-01 00:00:00+00', NULL,
       CASE WHEN g %% 33 = 0 THEN 'builtins.ValueError' ELSE '' END,
       CASE WHEN g %% 33 = 0 THEN E'Traceback (most recent call last):\\nValueError: boom' ELSE '' END
FROM generate_series(1, %(rows)s) AS g
"""


@dataclass(frozen=True, slots=True)
class TableFigures:
    rows: int  # finished rows in the table besides the measured ones
    latency: Distribution
    throughput: Throughput  # noop, the best of the rounds
    rounds: int


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
        cursor.execute(FILL.format(table=table), {"rows": rows, "step": SPAN_S / rows})
        cursor.execute(f"VACUUM (ANALYZE) {table}")
    return filled_before
