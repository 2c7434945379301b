"""A project whose task backend is not a database backend."""

from tsproject.settings import *  # noqa: F403

TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
