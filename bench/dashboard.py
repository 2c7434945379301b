"""The admin dashboard's page and its refresh with a million finished task rows.

    .venv/bin/python bench/dashboard.py [--rows N] [--repeat R] [--engines postgres sqlite]

Fills a fresh database of the tests' project (tests/project) with N finished rows (one in 33
FAILED) over the last 7 days in 5 queues and 20 task paths, plus 200 READY and 8 RUNNING rows, a
day of per-minute figures and 3 node snapshots, then times, through Django's test client as a
logged-in superuser: the page itself, and its data endpoint (what every refresh fetches) over
the last hour, the last 24 hours, and with the failures filtered by task path and by queue.
Prints the median and the slowest of R runs in milliseconds, and the queries each request made.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchkit import testproject
from benchkit.database import PG_FINISHED_ROWS

from tests.support import use_database

REQUESTS = {
    "page (HTML)": ("/admin/task_supervisor/dashboard/", {}),
    "refresh, last hour": ("/admin/task_supervisor/dashboard/data/", {}),
    "refresh, last 24 h": ("/admin/task_supervisor/dashboard/data/", {"range": "24h"}),
    "failures by task path": ("/admin/task_supervisor/dashboard/data/", {"task": "benchapp.tasks.t7"}),
    "failures by queue": ("/admin/task_supervisor/dashboard/data/", {"queue": "q3"}),
}
SPAN_S = 7 * 86400  # finished rows spread over this many seconds before now

PG_FILL = {  # PG_FINISHED_ROWS's expressions: 20 task paths over 5 queues
    "task_path": "'benchapp.tasks.t' || (g %% 20)",
    "worker_ids": """'["bench:default:0:1"]'::jsonb""",
    "queue": "'q' || (g %% 5)",
}

SQLITE_FILL = """
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < %(rows)s)
INSERT INTO {table} (id, status, enqueued_at, started_at, finished_at, args_kwargs, priority, task_path,
                     worker_ids, queue_name, backend_name, run_after, return_value, exception_class_path, traceback)
SELECT lower(hex(randomblob(16))), CASE WHEN n %% 33 = 0 THEN 'FAILED' ELSE 'SUCCESSFUL' END,
       strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', printf('-%%.3f seconds', n * %(step)s + 1)),
       strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', printf('-%%.3f seconds', n * %(step)s)),
       strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', printf('-%%.3f seconds', n * %(step)s - 0.01)),
       '{{"args": [], "kwargs": {{}}}}', 0, 'benchapp.tasks.t' || (n %% 20), '["bench:default:0:1"]',
       'q' || (n %% 5), 'default', '9999-01-01 00:00:00', NULL,
       CASE WHEN n %% 33 = 0 THEN 'builtins.ValueError' ELSE '' END,
       CASE WHEN n %% 33 = 0 THEN 'Traceback (most recent call last):' || char(10) || 'ValueError: boom' ELSE '' END
FROM g
"""


def fill(engine: str, rows: int) -> None:
    """The finished rows in one statement, then the live ones, figures and snapshots."""
    import datetime as dt

    from django.db import connection
    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult
    from tsapp import tasks as t

    from task_supervisor.chores.publish import compact
    from task_supervisor.models import MinuteFigures, NodeHeartbeat, NodeSnapshot

    table = connection.ops.quote_name(DBTaskResult._meta.db_table)
    sql = PG_FINISHED_ROWS.format(table=table, **PG_FILL) if engine == "postgres" else SQLITE_FILL.format(table=table)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"rows": rows, "step": SPAN_S / rows})
    for n in range(200):
        t.noop.using(queue_name=f"q{n % 5}").enqueue()
    running = [t.noop.enqueue().id for _ in range(8)]
    DBTaskResult.objects.filter(id__in=running).update(status="RUNNING", started_at=timezone.now())
    start = timezone.now().replace(second=0, microsecond=0)
    MinuteFigures.objects.bulk_create(
        MinuteFigures(minute=start - dt.timedelta(minutes=m), queue=f"q{q}", succeeded=99, ready=3, node="a")
        for m in range(1, 1441)
        for q in range(5)
    )
    for node in ("a", "b", "c"):
        NodeHeartbeat.objects.create(node=node, pid=1, pools=["default"], started_at=start, last_seen=timezone.now())
        pools = [{"name": "default", "queues": [f"q{q}" for q in range(5)], "desired": 8, "children": []}]
        NodeSnapshot.objects.create(node=node, last_seen=timezone.now(), snapshot=compact({"pools": pools}))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def measure(repeat: int) -> list[tuple[str, float, float, int]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(User.objects.create_superuser("bench", "bench@example.com", "pw"))
    figures = []
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        for label, (url, query) in REQUESTS.items():
            assert client.get(url, query).status_code == 200, label  # warm: caches, plans
            times = []
            for _ in range(repeat):
                with CaptureQueriesContext(connection) as queries:
                    began = time.perf_counter()
                    response = client.get(url, query)
                    times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, label
            figures.append((label, statistics.median(times), max(times), len(queries.captured_queries)))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished task rows (default 1000000)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each request (default 20)")
    parser.add_argument("--engines", nargs="+", default=["postgres", "sqlite"], choices=["postgres", "sqlite"])
    args = parser.parse_args(argv)
    with testproject.databases("ts-bench-dashboard-") as (factory, _):
        from django.db import connections

        print(f"admin dashboard with {args.rows} finished task rows ({args.repeat} runs each, ms)")
        print(f"{'database':<10} {'request':<24} {'median':>8} {'slowest':>8} {'queries':>8}")
        for engine in args.engines:
            db = factory.create(engine)
            use_database(db)
            try:
                began = time.monotonic()
                fill(engine, args.rows)
                print(f"  {engine}: {args.rows} rows in {time.monotonic() - began:.0f}s", file=sys.stderr)
                for label, median, slowest, queries in measure(args.repeat):
                    print(f"{engine:<10} {label:<24} {median:>8.1f} {slowest:>8.1f} {queries:>8}", flush=True)
            finally:
                connections.close_all()
                factory.drop(db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
