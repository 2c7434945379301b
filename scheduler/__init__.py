"""Periodic tasks declared in settings.PERIODIC_TASKS, enqueued once per slot."""
