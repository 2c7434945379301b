"""The demo project that the repository's config.toml supervises (SQLite, no server needed).

With DATABASE_URL set (deploy/ sets it from a Kubernetes Secret) it runs on PostgreSQL instead.
"""

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured


def database_from_url(url: str) -> dict:
    """A DATABASES entry from postgres://USER:PASSWORD@HOST:PORT/NAME?sslmode=verify-full."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL must start with postgres:// or postgresql://, not {parts.scheme}://.")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


BASE_DIR = Path(__file__).resolve().parent.parent

# A project of your own reads both from its environment; the demo has defaults to run anywhere.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_tasks_db",
    "task_supervisor",
    "demo",
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            "OPTIONS": {"timeout": 20},
        }
    }

TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default", "reports"],
    }
}

# The supervisor's scheduler enqueues these, once per slot however many replicas run.
PERIODIC_TASKS = {
    "pulse": {"task": "demo.tasks.pulse", "every": "10s"},
    "nightly-cleanup": {
        "task": "demo.tasks.cleanup",
        "cron": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "kwargs": {"older_than_days": 30},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [%(name)s] %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django.tasks": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "demo": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}
