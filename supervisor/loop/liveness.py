"""Hung children: a child stopped by a signal or a debugger, or stuck while idle, is seen and
replaced within a documented bound instead of showing ``idle`` forever.

- Every PING_INTERVAL an idle child gets ``ping n`` on its control pipe; an idle db_worker waits
  between polls on that pipe, so it answers ``pong n`` at once. One that has not answered
  ``hung_after`` seconds after the ping (the [supervisor] key, 30 s by default) is hung.
- Every check the OS state of each child is read: one that is stopped (SIGSTOP, a debugger's
  trace stop) at two checks in a row is hung, busy or idle.

A hung child is logged (child_hung), counted, shown in status and /readyz, and killed: its slot
gets a new child and its row, if it had claimed one, goes through the pool's on_worker_lost.
Busy children are not pinged: their task has the main thread, and timeouts bound it.
"""

from __future__ import annotations

import logging

import psutil

from task_supervisor import events
from task_supervisor.loop.child import Child, ChildState
from task_supervisor.loop.proc import ProcessCalls
from task_supervisor.observe.stats import Stats
from task_supervisor.wire import control

log = logging.getLogger("task_supervisor.loop.arbiter")

PING_INTERVAL = 2.0  # seconds between pings of an idle child
CHECK_INTERVAL = 1.0  # seconds between reads of the children's OS state
STOPPED = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP})


class Liveness:
    def __init__(self, stats: Stats, calls: ProcessCalls) -> None:
        self.stats = stats
        self.calls = calls
        self.next_check = 0.0
        self.seq = 0

    def next_due(self) -> float:
        return self.next_check

    def check(self, now: float, children: list[Child], hung_after: float) -> None:
        if now < self.next_check:
            return
        self.next_check = now + CHECK_INTERVAL
        for child in children:
            if child.killed:
                continue
            stopped = self.calls.state(child.pid) in STOPPED
            child.stopped_checks = child.stopped_checks + 1 if stopped else 0
            if child.stopped_checks >= 2:
                self.hung(child, "the OS reports it stopped (SIGSTOP or a debugger)")
            elif child.state is ChildState.IDLE:
                self.ping(now, child, hung_after)

    def ping(self, now: float, child: Child, hung_after: float) -> None:
        if child.ping_sent_at is None:
            if now - child.heard_at >= PING_INTERVAL:
                self.seq += 1
                child.ping_sent_at, child.ping_seq = now, self.seq
                control.send_ping(child.control_fd, self.seq)
        elif now - child.ping_sent_at >= hung_after:
            self.hung(child, f"it did not answer a ping within hung_after ({hung_after:g}s) while idle")

    def hung(self, child: Child, why: str) -> None:
        child.hung = why
        self.stats.hung[child.spec.pool] += 1
        log.error(
            "Child %s is hung: %s; replacing it",
            child.spec.worker_id,
            why,
            extra={**child.log_extra, "event": events.CHILD_HUNG, "reason": why},
        )
        child.kill(f"it was hung: {why}")
