"""Failed tasks reported to Sentry, once each, when the project initialises ``sentry_sdk``.

Nothing here imports sentry_sdk: a project that initialises it in its settings has imported it
already (``sys.modules``), and a project without it pays nothing. Two sides report:

- the child, for a task that fails while it runs (its exception, traceback included), from the
  framework's ``task_finished`` signal, sent inside db_worker's ``except`` block;
- the supervisor, for a task whose worker was lost (WorkerLost) or killed at its hard timeout
  (TaskTimeout), when the janitor finishes its row.

Each event carries the tags TAGS. The same failures are also logged at ERROR (by the framework in
the child, by the janitor and the loop here), which Sentry's logging integration would turn into
a second event; ``install`` adds an event processor that drops those log events only. A child's
own exit (crashed, killed) stays an event of its own, about the process.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from task_supervisor import events

TAGS = ("task_id", "task_path", "queue", "attempt", "worker_id")
# Log records that repeat a failure reported here: (logger name prefix, its "event" extra, or the
# start of its message for the framework's own logger, which has no extra).
_OWN_EVENTS = frozenset(
    {
        events.TASK_LOST,
        events.TASK_LOST_HANDLED,
        events.RETRY_EXHAUSTED,
        events.TASK_TIMEOUT_KILL,
        events.TASK_CANCEL_KILL,
    }
)
_FRAMEWORK_LOGGERS = ("django.tasks", "django_tasks")
_installed = False
FLUSH_BEFORE_FORK_S = 1.0  # seconds a fork waits at most for queued events to be sent


def sdk() -> Any | None:
    """The sentry_sdk module when the project imported it and initialised a client, else None."""
    module = sys.modules.get("sentry_sdk")
    if module is None:
        return None
    try:
        return module if module.get_client().is_active() else None
    except Exception:  # an SDK too old or broken: report nothing rather than fail a task
        return None


def _drop_repeats(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Drop a log event about a failure that is reported as its own event."""
    logger = str(event.get("logger") or "")
    if logger.startswith("task_supervisor") and (event.get("extra") or {}).get("event") in _OWN_EVENTS:
        return None
    if logger.startswith(_FRAMEWORK_LOGGERS):
        message = (event.get("logentry") or {}).get("message") or ""
        if str(message).startswith("Task id=") and event.get("level") == "error":
            return None
    return event


def install() -> bool:
    """Drop the repeating log events; True when Sentry is on in this process."""
    global _installed
    module = sdk()
    if module is None:
        return False
    if not _installed:
        # First of all processors: a dropped log event must not reach the dedupe integration, which
        # would then drop the report that follows it for having the same exception.
        processors = getattr(module.scope, "global_event_processors", None)
        if isinstance(processors, list):
            processors.insert(0, _drop_repeats)
        else:
            module.scope.add_global_event_processor(_drop_repeats)
        _installed = True
    return True


def report(
    *,
    task_id: str,
    path: str,
    queue: str,
    attempt: int,
    worker_id: str,
    exception_path: str,
    message: str = "",
    exc_info: Any = None,
    extra_tags: dict[str, str] | None = None,
) -> None:
    """One event for one failed task: its exception when ``exc_info`` has one, else a message."""
    module = sdk()
    if module is None:
        return
    tags = {"task_id": task_id, "task_path": path, "queue": queue, "attempt": str(attempt), "worker_id": worker_id}
    try:
        with module.new_scope() as scope:
            for key, value in {**tags, "exception": exception_path, **(extra_tags or {})}.items():
                scope.set_tag(key, value)
            scope.set_context("task", {**tags, "exception": exception_path, "message": message})
            if exc_info is not None and exc_info[0] is not None:
                module.capture_exception(exc_info)
            else:
                module.capture_message(f"{exception_path}: {message}".strip(), level="error")
    except Exception:  # reporting must never fail a task or the loop
        return


def quiesce(timeout: float = FLUSH_BEFORE_FORK_S) -> None:
    """Before a fork: send what is queued and stop the SDK's sender thread, which no fork may
    cross (loop/spawn.py); the SDK starts it again at its next event."""
    if not _sender_threads():
        return
    module = sdk()
    if module is None:
        return
    client = module.get_client()
    try:
        client.flush(timeout=timeout)
        if client.transport is not None:
            client.transport.kill()
    except Exception:  # the fork's own check names any thread left
        return
    deadline = time.monotonic() + timeout
    while _sender_threads() and time.monotonic() < deadline:
        time.sleep(0.005)


def _sender_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sentry-sdk") and t.is_alive()]
