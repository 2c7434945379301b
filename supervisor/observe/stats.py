"""Counters and gauges the loop keeps as things happen; metrics and status read them."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class Stats:
    # (pool, reason) -> count; reason is an ExitReason value: stopped, recycled, boot_failed, crashed
    restarts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # pool -> count
    tasks_started: collections.Counter[str] = field(default_factory=collections.Counter)
    # (pool, status) -> count; status as the framework reports it (SUCCESSFUL, FAILED, ...)
    tasks_finished: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # (pool, kind) -> count; kind "soft" (TaskTimeout raised) or "hard" (child killed)
    timeouts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # (pool, outcome) -> count; outcome "failed" or "requeued"
    lost_tasks: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # (pool, outcome) -> count; outcome "scheduled" (back to READY later) or "exhausted" (last attempt)
    retries: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # pool -> finishes a worker did not write: its row was no longer RUNNING under its worker id
    fenced_writes: collections.Counter[str] = field(default_factory=collections.Counter)
    # pool -> children found hung (stopped by the OS, or silent while idle) and replaced
    hung: collections.Counter[str] = field(default_factory=collections.Counter)
    # (pool, direction) -> count; direction "up" or "down"
    scale_events: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # queue -> READY tasks that may run now, and age in seconds of the oldest of them
    queue_depth: dict[str, int] = field(default_factory=dict)
    oldest_ready_age: dict[str, float] = field(default_factory=dict)
    # (schedule, outcome) -> slots; outcome "fired" (enqueued here), "taken" (by another replica),
    # "overlap" (skipped: the previous run still going) or "missed" (dropped by the missed-run policy)
    slots: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # schedule -> lag in seconds of the latest slot fired here, and the sum over all of them
    slot_lag: dict[str, float] = field(default_factory=dict)
    slot_lag_total: collections.Counter[str] = field(default_factory=collections.Counter)
    # kind -> rows deleted by retention; kind "successful", "failed" or "schedule_runs"
    pruned: collections.Counter[str] = field(default_factory=collections.Counter)
    # pool -> running tasks told to stop because an operator cancelled them
    cancels: collections.Counter[str] = field(default_factory=collections.Counter)
    # [limits]: one census per limit (flowinfo.LimitCensus.as_dict), refreshed by the janitor
    flow: list[dict] = field(default_factory=list)
    # pool -> claims that found nothing eligible because limits held rows back
    held_claims: collections.Counter[str] = field(default_factory=collections.Counter)
    # pool -> claim attempts that found no READY row (with tasks_started: the claim attempts)
    empty_claims: collections.Counter[str] = field(default_factory=collections.Counter)
    # queue -> 1 while paused (read with the queue depths)
    paused_queues: dict[str, int] = field(default_factory=dict)
    # workflow state -> workflows (RUNNING, SUCCEEDED, FAILED, CANCELLED), counted by the sweep
    workflows: dict[str, int] = field(default_factory=dict)
    # "handed_over" -> hand-overs the janitor's sweep completed (a child's fast path had not)
    workflow_sweeps: collections.Counter[str] = field(default_factory=collections.Counter)
