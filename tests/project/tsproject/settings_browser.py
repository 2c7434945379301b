"""The test project served by ``runserver`` for the dashboard's browser test: the admin's own
static files too (served by runserver in DEBUG), so the page loads with nothing missing."""

from tsproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "django.contrib.staticfiles"]  # noqa: F405
STATIC_URL = "/static/"
ALLOWED_HOSTS = ["127.0.0.1"]
