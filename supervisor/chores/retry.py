"""Retries: a failed task with a policy goes back to READY on its same row, after a backoff.

Attempts are counted from the row's worker ids (one per claim), so retries and requeues of lost
tasks share one budget, and a caller holding the result sees the final outcome under one id.
"""

from __future__ import annotations

import builtins
import random
from functools import lru_cache

from django.utils.module_loading import import_string

from task_supervisor.config import RetryPolicy


def retry_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` failed ones (1-based).

    Exponential doubles ``delay`` per failed attempt up to ``max_delay``; with jitter the wait is
    drawn from its upper half, so a burst of failures does not come back in lockstep.
    """
    if policy.backoff == "fixed":
        delay = policy.delay
    else:
        delay = policy.delay * 2 ** max(0, attempt - 1)
    delay = min(delay, policy.max_delay)
    if policy.jitter:
        delay = rng.uniform(delay / 2, delay)
    return delay


@lru_cache(maxsize=256)
def _resolve(path: str) -> type | None:
    try:
        found = getattr(builtins, path) if "." not in path else import_string(path)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def matches(policy: RetryPolicy, exception_path: str) -> bool:
    """Does a failure with this exception class call for a retry under ``policy``?"""
    if not policy.on:
        return True
    raised = _resolve(exception_path)
    for name in policy.on:
        if name == exception_path:
            return True
        wanted = _resolve(name)
        if raised is not None and wanted is not None and issubclass(raised, wanted):
            return True
    return False


def problems(retries: dict[str, RetryPolicy], task_class: type | None) -> list[str]:
    """What ``check`` reports: task paths that do not import, ``on`` entries that are not exceptions."""
    found = []
    for task_path, policy in retries.items():
        try:
            task = import_string(task_path)
        except ImportError as exc:
            found.append(f'retries."{task_path}": the task does not import ({exc}); fix the dotted path.')
        else:
            if task_class is not None and not isinstance(task, task_class):
                found.append(f'retries."{task_path}" is not a task (decorate it with @task).')
        found += _on_problems(f'retries."{task_path}".on', policy)
    return found


def _on_problems(key: str, policy: RetryPolicy) -> list[str]:
    found = []
    for name in policy.on:
        cls = _resolve(name)
        if cls is None or not issubclass(cls, BaseException):
            found.append(
                f"{key} entry {name!r} is not an exception class; use a dotted path such as "
                "'smtplib.SMTPException' or a builtin such as 'ConnectionError'."
            )
    return found


def pool_problems(pools: dict[str, RetryPolicy | None]) -> list[str]:
    found = []
    for name, policy in pools.items():
        if policy is not None:
            found += _on_problems(f"pools.{name}.retries.on", policy)
    return found
