"""Settings of the benchmark's driver: both databases at once, behind a router.

The driver enqueues tasks and reads their rows on whichever database is under test; the workers
only ever see one (benchproject.settings, chosen by BENCH_DB_ENGINE / BENCH_DB_NAME).
"""

from __future__ import annotations

import os

from benchproject.settings import *  # noqa: F403
from benchproject.settings import database

DATABASES = {
    "default": database("postgres", os.environ.get("BENCH_PG_NAME", "")),
    "sqlite": database("sqlite", os.environ.get("BENCH_SQLITE_PATH", "")),
}
DATABASE_ROUTERS = ["benchproject.routers.ActiveDatabase"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
