"""Settings of the project the test suite supervises.

The database comes from the environment so that one project serves every database:
TS_DB_ENGINE = "sqlite" (TS_DB_NAME is a file path), "postgres" (TS_DB_NAME is a database
on 127.0.0.1:5432), "pgbouncer" (the same through PgBouncer on TS_PGBOUNCER_PORT, with a
"direct" alias beside it), or "mariadb" / "mariadb-rr" (a database on 127.0.0.1:3306 through
mysqlclient, under READ COMMITTED, Django's default, or REPEATABLE READ, MariaDB's own).
"""

import json
import os

SECRET_KEY = "tests-only"
DEBUG = True  # db_worker would autoreload without --no-reload; the supervisor must pass it.
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_tasks_db",
    "task_supervisor",
    "tsapp",
]

_engine = os.environ.get("TS_DB_ENGINE", "sqlite")
_name = os.environ.get("TS_DB_NAME", os.path.join(os.path.dirname(__file__), "..", "db.sqlite3"))
if _engine in ("postgres", "pgbouncer"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _name,
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("TS_DB_PORT", "5432"),
            "USER": os.environ.get("TS_DB_USER", "postgres"),
            "CONN_MAX_AGE": 0,
        }
    }
    if _engine == "pgbouncer":
        # The tasks through PgBouncer in transaction pooling; "direct" for the supervisor's LISTEN.
        DATABASES["direct"] = dict(DATABASES["default"])
        DATABASES["default"].update(PORT=os.environ["TS_PGBOUNCER_PORT"], DISABLE_SERVER_SIDE_CURSORS=True)
elif _engine in ("mariadb", "mariadb-rr"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": _name,
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("TS_DB_PORT", "3306"),
            "USER": os.environ.get("TS_DB_USER", "ts_test"),
            "PASSWORD": os.environ.get("TS_DB_PASSWORD", "ts_test"),
            "CONN_MAX_AGE": 0,
            "OPTIONS": {
                "isolation_level": os.environ.get(
                    "TS_DB_ISOLATION", "repeatable read" if _engine == "mariadb-rr" else "read committed"
                )
            },
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _name,
            "OPTIONS": {"timeout": 20},
        }
    }

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.request",
            ]
        },
    }
]

# QUEUES = []: any queue name is valid.
ROOT_URLCONF = "tsproject.urls"

# Schedules for the scheduler's tests, as JSON in the environment.
PERIODIC_TASKS = json.loads(os.environ.get("TS_PERIODIC_TASKS", "{}"))

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
}
