"""Settings of the project the benchmark's workers run.

The database comes from the environment, so that bare db_workers and the supervisor's children
run on exactly the same one: BENCH_DB_ENGINE = "postgres" (BENCH_DB_NAME is a database on
127.0.0.1:5432, user postgres; BENCH_PG_PORT another port, BENCH_PG_DIRECT_PORT a direct port beside
a PgBouncer one) or "sqlite" (BENCH_DB_NAME is a file path). Django's defaults
otherwise, CONN_MAX_AGE = 0 included: that is what a bare db_worker gets.
"""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = ["django_tasks_db", "task_supervisor", "benchapp"]


def database(engine: str, name: str) -> dict[str, Any]:
    if engine == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
            "USER": os.environ.get("BENCH_PG_USER", "postgres"),
        }
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "OPTIONS": {"timeout": 20}}


DATABASES = {"default": database(os.environ.get("BENCH_DB_ENGINE", "sqlite"), os.environ.get("BENCH_DB_NAME", ""))}
if os.environ.get("BENCH_PG_DIRECT_PORT"):
    # bench/fleet.py through PgBouncer: "default" goes through it, "direct" (the supervisor's
    # LISTEN, listen_database) does not.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    DATABASES["direct"] = {**DATABASES["default"], "PORT": os.environ["BENCH_PG_DIRECT_PORT"]}

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
