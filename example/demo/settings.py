"""The demo project that the repository's config.toml supervises (SQLite, no server needed)."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
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
