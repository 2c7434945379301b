"""Django system checks for settings.PERIODIC_TASKS."""

from __future__ import annotations
