"""The guide's project (setup c): django-tasks 0.8 to 0.11 with its own database backend.

INSTALLED_APPS and TASKS are the guide's, verbatim; task_supervisor is deliberately not installed.
"""

import os

SECRET_KEY = "tests-only"
DEBUG = True
USE_TZ = True

INSTALLED_APPS = [
    "django_tasks",  # new
    "django_tasks.backends.database",  # new
]
INSTALLED_APPS += ["worker_test"]

TASKS = {
    "default": {
        "BACKEND": "django_tasks.backends.database.DatabaseBackend",
    },
}

if os.environ.get("TS_DB_ENGINE") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["TS_DB_NAME"],
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "USER": "postgres",
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("TS_DB_NAME", "guide.sqlite3"),
        }
    }
