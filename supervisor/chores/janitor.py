"""The supervisor's database chores: lost rows, heartbeats, dead nodes, the sweep.

They run on the supervisor's loop between turns, each statement bounded (see recovery.bounded),
and what fails is kept and retried with backoff: a database outage delays the chores, it never
stalls the loop or loses a row to finish.

When a child exits, its RUNNING rows are looked up by its worker id. On a client-server database
a claim whose COMMIT was sent just before the child died can become visible after that lookup
(the server finishes the commit on its own), so every SWEEP_INTERVAL the sweep looks again at all
of this node's RUNNING rows and recovers those whose worker id no live child has.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable
from typing import Any

from django.utils import timezone

from task_supervisor import events
from task_supervisor.chores import cancels, outcomes, publish, recovery
from task_supervisor.chores.figures import Figures
from task_supervisor.chores.flowcensus import FlowCensus
from task_supervisor.chores.recovery import FailedTask, LostTask
from task_supervisor.chores.retention import Retention
from task_supervisor.chores.timebox import timebox
from task_supervisor.chores.workflowsweep import WorkflowSweep
from task_supervisor.compat import TaskBackend
from task_supervisor.config import Config, PoolConfig
from task_supervisor.observe.stats import Stats

log = logging.getLogger(__name__)

RETRY_MIN = 0.5  # seconds before retrying chores after a database error
RETRY_MAX = 10.0
QUEUE_DEPTH_INTERVAL = 2.0  # seconds between READY-depth queries (metrics, autoscaling, backlog wake)
# Seconds between them while the last found no READY task and nothing runs here: a burst then wakes
# children by its notices (or their poll, without notices); this only delays the gauges.
QUEUE_DEPTH_IDLE_INTERVAL = 10.0
MAX_ITEMS_PER_TURN = 20  # lost rows finished per loop turn, so a burst cannot hog the loop
CHORES_DEADLINE = 2.5  # seconds one turn of chores may block the loop (each statement: 2 s)
# Seconds between sweeps of this node's RUNNING rows. It bounds how long a row stays RUNNING
# under a worker id no live child has: found by the first sweep after its claim is visible, and
# finished on the next turn (later only while the database fails, when every chore waits).
SWEEP_INTERVAL = 5.0
# A late-visible claim follows a child's exit by at most a commit's delay: sweeps come every
# SWEEP_INTERVAL until SWEEP_AFTER_EXIT after the last exit, then every SWEEP_IDLE_INTERVAL.
SWEEP_AFTER_EXIT = 30.0
SWEEP_IDLE_INTERVAL = 60.0
# A node whose heartbeat is older than this many beat intervals is left out of the fleet that
# shares wake-ups (loop/fleet.py): late by one beat, not yet dead.
FLEET_FRESH_BEATS = 2.5
EXITS_KEPT = 10_000  # worker ids of exited children remembered for the sweep's verdict
CANCELLED = "task_supervisor.TaskCancelled"  # never retried


class Janitor:
    def __init__(
        self,
        config: Config,
        backends: dict[str, TaskBackend],
        clock: Callable[[], float],
        stats: Stats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.clock = clock
        self.stats = stats or Stats()
        self.rng = rng or random.Random()
        self.pending: collections.deque[tuple[TaskBackend, LostTask | FailedTask]] = collections.deque()
        # task id -> (path, attempts so far, when it runs again), for status
        self.retries_scheduled: dict[str, tuple[str, int, str]] = {}
        self.retry_at = 0.0
        self.retry_delay = RETRY_MIN
        self.next_beat = 0.0
        self.next_dead_check = 0.0
        self.started_at = timezone.now()
        self.heartbeats = recovery.heartbeats_installed()
        self.next_sweep = 0.0
        # Worker ids of this supervisor's children whose exit was handed to lost(), oldest first.
        self.exited: dict[str, None] = {}
        self.db_ok = True
        self.db_error: str | None = None
        self.last_beat: str | None = None
        self.lease_sent_at: float | None = None  # monotonic time the last heartbeat that went through was sent
        self.next_depth = 0.0
        # Operator actions: cancel requests for tasks our children run, and retention.
        self.next_cancels = 0.0
        self.cancels_due: list[tuple[str, str]] = []  # (task id, worker id) for the loop to deliver
        self.retention = Retention(config.supervisor.node, clock, self.stats)
        self.figures = Figures(config.supervisor.node, clock)
        self.flow = FlowCensus(clock, self.stats)  # [limits]: what each key holds back
        self.workflows = WorkflowSweep(config, clock, self.stats)  # hand-overs a child did not complete
        self.publish: Callable[[], dict[str, Any]] | None = None  # the loop's status, for the dashboard
        # the queues served, told with each heartbeat; the fleet read back with it: (node, queues)
        # of each live node, None before the first beat
        self.queues: Callable[[], list[str]] | None = None
        self.fleet: list[tuple[str, list[str]]] | None = None
        self.depth_readings = 0  # READY depths read so far (the loop's backlog wake follows them)
        self.busy: set[str] = set()  # worker ids of the children running a task (the loop sets it)
        self.last_exit_at = float("-inf")  # monotonic time a child's exit was last handed to lost()
        if not self.heartbeats:
            log.warning(
                "Node heartbeats and dead-node recovery are off: add 'task_supervisor' to INSTALLED_APPS "
                "and run migrate to turn them on",
                extra={"event": events.HEARTBEATS_OFF},
            )

    def aliases(self) -> set[str]:
        """The connections a chore may block on, which its time box cuts at the deadline."""
        return {b.db_alias for b in self.backends.values()}

    @property
    def node(self) -> str:
        return self.config.supervisor.node

    def distinct_backends(self) -> list[TaskBackend]:
        seen: dict[tuple[str, str], TaskBackend] = {}
        for backend in self.backends.values():
            seen.setdefault((backend.package, backend.db_alias), backend)
        return list(seen.values())

    def pool_config(self, pool: str) -> PoolConfig:
        return self.config.pools.get(pool) or PoolConfig(name=pool, queues=(pool,))

    def backend_for(self, pool: str) -> TaskBackend:
        return self.backends.get(pool) or next(iter(self.backends.values()))

    def lost(self, pool: str, lost: LostTask) -> None:
        """A child exited: finish the row it may have left RUNNING."""
        self.exited[lost.worker_id] = None
        self.last_exit_at = self.clock()
        self.next_sweep = min(self.next_sweep, self.last_exit_at + SWEEP_INTERVAL)
        self.workflows.nudge()  # it may have died between a step's verdict and its hand-over
        while len(self.exited) > EXITS_KEPT:
            del self.exited[next(iter(self.exited))]
        self.pending.append((self.backend_for(pool), lost))

    def task_failed(self, pool: str, failed: FailedTask) -> None:
        """A child reported a task FAILED; retry it if a policy covers it (never a cancelled one)."""
        self.workflows.nudge()  # a workflow step's failure is judged by the sweep
        if failed.exception_path == CANCELLED:
            return
        if self.config.retry_policy(pool, failed.path) is not None:
            self.pending.append((self.backend_for(pool), failed))

    def lost_from_worker(self, worker_id: str, message: str) -> LostTask:
        parsed = recovery.parse_worker_id(worker_id)
        pool = self.pool_config(parsed[1] if parsed else "")
        return LostTask(
            worker_id=worker_id,
            task_id=None,
            message=message,
            on_worker_lost=pool.on_worker_lost,
            max_attempts=pool.max_attempts,
        )

    def first_tick(self, now: float, live_worker_ids: set[str], pools: list[str]) -> None:
        """At start, before any child: recover what an earlier run of this node left, then tick."""
        try:
            self.recover_own(live_worker_ids)
        except Exception as exc:
            log.error(
                "Could not look for tasks left RUNNING by an earlier run of node %s: %s",
                self.node,
                exc,
                extra={"event": events.DB_ERROR},
            )
        self.tick(now, live_worker_ids, pools)

    def recover_own(self, live_worker_ids: set[str]) -> None:
        """Queue the RUNNING rows of this node's earlier incarnations (no live child has them)."""
        with timebox(CHORES_DEADLINE, "looking for this node's RUNNING rows", self.aliases()):
            self._sweep(
                live_worker_ids,
                f"The worker running this task ({{worker_id}}) was gone when its supervisor restarted on node "
                f"{self.node}.",
            )
        self.next_sweep = self.clock() + SWEEP_INTERVAL

    def _sweep(self, live_worker_ids: set[str], stranger: str) -> None:
        """Queue this node's RUNNING rows that no live child holds and no queued loss covers.

        ``stranger`` is the message for a worker id that no child of this supervisor exited with.
        """
        held = live_worker_ids | {item.worker_id for _, item in self.pending}
        for backend in self.distinct_backends():
            for worker_id in sorted(recovery.running_worker_ids(backend, f"{self.node}:", exclude=held)):
                if worker_id in held:  # the query excluded these already; a live child's row is never taken
                    continue
                log.warning(
                    "Found RUNNING rows of worker %s, which is no live child of node %s; recovering them",
                    worker_id,
                    self.node,
                    extra={"event": events.LOST_ROWS_FOUND, "worker_id": worker_id},
                )
                self.pending.append((backend, self.swept_loss(worker_id, stranger)))

    def swept_loss(self, worker_id: str, stranger: str) -> LostTask:
        """What to record for a row the sweep found under ``worker_id``, a worker no longer alive."""
        if worker_id in self.exited:
            # Its exit was handled and this row was not RUNNING under it then: the claim committed
            # after that lookup, so the child never started the task (db_worker reports
            # task_started only once its claim is committed). Back to READY, as any unstarted claim.
            message = (
                f"The worker that claimed this task ({worker_id}) exited before starting it; the claim "
                "was committed only after the supervisor had looked for that worker's rows."
            )
            return dataclasses.replace(self.lost_from_worker(worker_id, message), on_worker_lost="requeue")
        return self.lost_from_worker(worker_id, stranger.format(worker_id=worker_id))

    def _recover_prefix(self, prefix: str, message: str) -> None:
        for backend in self.distinct_backends():
            for worker_id in sorted(recovery.running_worker_ids(backend, prefix)):
                lost = self.lost_from_worker(worker_id, message.format(worker_id=worker_id))
                self.pending.append((backend, lost))

    def next_due(self) -> float:
        moments = [max(self.retry_at, self.next_sweep)]
        if self.pending:
            moments.append(self.retry_at)
        if self.heartbeats:
            moments.append(self.next_beat)
            moments.append(max(self.retry_at, self.next_dead_check))
            if self.busy:
                moments.append(max(self.retry_at, self.next_cancels))
            if self.config.retention.enabled:
                moments.append(max(self.retry_at, self.retention.next_due()))
            moments.append(max(self.retry_at, self.figures.next_due()))
            moments.append(max(self.retry_at, self.flow.next_due(self.config.limits)))
            moments.append(max(self.retry_at, self.workflows.next_due()))
        return min(moments)

    def tick(self, now: float, live_worker_ids: set[str], pools: list[str]) -> list[tuple[str, str]]:
        """One turn of chores; ``live_worker_ids`` are those of every child of this supervisor.

        Returns the cancel requests found for tasks our children run: (task id, worker id).
        """
        # One call that may block per turn (the loop's hold stays within one CHORES_DEADLINE, as
        # the lease's margin counts on): a turn that sends the beat leaves the chores to the next,
        # which comes at once (they are due).
        if not self._renew_lease(now, pools):
            self._attempt(now, lambda: self._chores(now, live_worker_ids, pools))
        due, self.cancels_due = self.cancels_due, []
        return due

    def _attempt(self, now: float, chores: Callable[[], None]) -> None:
        if now < self.retry_at:
            return
        try:
            with timebox(CHORES_DEADLINE, "the database chores", self.aliases()):
                chores()
        except Exception as exc:  # a database error of any driver: retry later
            self._chores_failed(now, exc)
        else:
            self.retry_delay = RETRY_MIN
            self.db_ok, self.db_error = True, None

    def _chores(self, now: float, live_worker_ids: set[str], pools: list[str]) -> None:
        self._finish_pending()
        if self.heartbeats and now >= self.next_dead_check:
            self._recover_dead_nodes()
            self.next_dead_check = now + self.config.supervisor.beat_interval
        if now >= self.next_depth:
            self._measure_queues()
            quiet = not any(self.stats.queue_depth.values()) and not self.busy
            self.next_depth = now + (QUEUE_DEPTH_IDLE_INTERVAL if quiet else QUEUE_DEPTH_INTERVAL)
        if now >= self.next_sweep:
            self._sweep(
                live_worker_ids,
                f"The worker running this task ({{worker_id}}) is no live child of the supervisor of node {self.node}.",
            )
            recent = now - self.last_exit_at < SWEEP_AFTER_EXIT
            self.next_sweep = now + (SWEEP_INTERVAL if recent else SWEEP_IDLE_INTERVAL)
        if self.heartbeats:  # the operators' tables are installed with the heartbeats'
            self._operator_chores(now, live_worker_ids)

    def _operator_chores(self, now: float, live_worker_ids: set[str]) -> None:
        backends = self.distinct_backends()
        if now >= self.next_cancels and self.busy:  # cancels are of running tasks only
            self.cancels_due += [c for backend in backends for c in cancels.due(backend, self.busy)]
            self.next_cancels = now + cancels.CANCEL_POLL
        self.retention.tick(now, backends, self.config.retention)
        self.figures.tick(now, backends, self.config.retention)
        self.flow.tick(now, backends, self.config.limits)
        self.workflows.tick(now, backends)

    def _chores_failed(self, now: float, exc: Exception) -> None:
        from django.db import connections

        self.db_ok, self.db_error = False, " ".join(str(exc).split()) or type(exc).__name__
        log.warning(
            "Database chores failed, retrying in %.1fs: %s",
            self.retry_delay,
            self.db_error,
            extra={"event": events.DB_ERROR},
        )
        for backend in self.distinct_backends():
            connections[backend.db_alias].close()
        # From the clock, not ``now``: the failed call may have blocked up to its deadline.
        self.retry_at = max(now, self.clock()) + self.retry_delay
        self.retry_delay = min(RETRY_MAX, self.retry_delay * 2)

    def _finish_pending(self) -> None:
        for _ in range(min(MAX_ITEMS_PER_TURN, len(self.pending))):
            backend, item = self.pending[0]
            parsed = recovery.parse_worker_id(item.worker_id)
            pool = parsed[1] if parsed else ""
            if isinstance(item, LostTask):
                item = self._cancelled_loss(backend, item)
                policy_for = lambda path, pool=pool, item=item: (  # noqa: E731
                    None if item.exception_path == CANCELLED else self.config.retry_policy(pool, path)
                )
                for outcome in recovery.finish(backend, item, policy_for, self.rng):
                    outcomes.lost_handled(self.stats, self.retries_scheduled, pool, item, outcome)
            else:
                policy = self.config.retry_policy(pool, item.path)
                outcome = recovery.retry_failed(backend, item, policy, self.rng) if policy else None
                if outcome is not None:
                    outcomes.retry_handled(self.stats, self.retries_scheduled, pool, item.exception_path, outcome)
            self.pending.popleft()

    def _cancelled_loss(self, backend: TaskBackend, lost: LostTask) -> LostTask:
        """A lost worker's task that an operator had cancelled is recorded as cancelled."""
        if lost.exception_path == CANCELLED or not self.heartbeats or not cancels.requested(backend, lost.worker_id):
            return lost
        return dataclasses.replace(lost, exception_path=CANCELLED, message=f"{lost.message} It had been cancelled.")

    def _measure_queues(self) -> None:
        """READY depth and age of the oldest READY task per queue, and the paused queues, for
        metrics and autoscaling."""
        depth: dict[str, int] = {}
        oldest: dict[str, float] = {}
        now = timezone.now()
        first_backend = self.distinct_backends()[0]
        # One transaction for the pauses and the depths (the depths' own, nested, are savepoints).
        with recovery.bounded(first_backend) if self.heartbeats else contextlib.nullcontext():
            if self.heartbeats:
                from task_supervisor.models import QueuePause

                paused = QueuePause.objects.using(first_backend.db_alias).values_list("queue", flat=True)
                self.stats.paused_queues = dict.fromkeys(paused, 1)
            for backend in self.distinct_backends():
                for queue, count, first in recovery.ready_by_queue(backend):
                    depth[queue] = depth.get(queue, 0) + count
                    age = (now - first).total_seconds() if first else 0.0
                    oldest[queue] = max(oldest.get(queue, 0.0), age)
        self.stats.queue_depth = depth
        self.stats.oldest_ready_age = oldest
        self.depth_readings += 1

    def _renew_lease(self, now: float, pools: list[str]) -> bool:
        """Send the heartbeat, which renews this node's lease, in an attempt of its own; True when
        it was due (sent, or tried and failed).

        Its own time box and its own backoff: a chore that keeps failing (a lost row the database
        refuses to update, say) must not hold back the beat, or the lease would run out and stop
        every running task while the database answers.
        """
        if not self.heartbeats or now < self.next_beat:
            return False
        backend = self.distinct_backends()[0]
        sent_at = self.clock()  # the database stamps the beat no earlier: the lease counts from here
        try:
            with timebox(CHORES_DEADLINE, "the heartbeat", self.aliases()):
                queues = self.queues() if self.queues is not None else []
                fresh = FLEET_FRESH_BEATS * self.config.supervisor.beat_interval
                fleet = recovery.beat(self.node, pools, self.started_at, backend, self._published(), queues, fresh)
        except Exception as exc:  # a database error of any driver: retry with the chores' backoff
            self._chores_failed(now, exc)
            self.next_beat = self.retry_at
            return True
        self.lease_sent_at = sent_at
        self.fleet = fleet
        self.next_beat = now + self.config.supervisor.beat_interval
        self.last_beat = timezone.now().isoformat()
        return True

    def _published(self) -> dict[str, Any] | None:
        """What this node publishes for the dashboard (None before the loop hands its status in)."""
        return publish.compact(self.publish()) if self.publish is not None else None

    def _recover_dead_nodes(self) -> None:
        for node in recovery.dead_nodes(self.config.supervisor.node_timeout, self.node):
            log.warning(
                "Node %s stopped sending heartbeats; recovering its running tasks",
                node,
                extra={"event": events.DEAD_NODE, "node": node},
            )
            self._recover_prefix(
                f"{node}:",
                f"The worker running this task ({{worker_id}}) belonged to node {node}, whose supervisor "
                f"stopped sending heartbeats for over {self.config.supervisor.node_timeout:.0f}s.",
            )
            while self.pending:
                self._finish_pending()
            # Only now, with every row of it finished: forget the node (unless it came back).
            recovery.forget_node(node, only_if_older_than=self.config.supervisor.node_timeout)

    def flush(self, deadline: float) -> None:
        """At exit: finish what is pending while the deadline allows, and drop our heartbeat."""
        while self.pending and self.clock() < deadline:
            self.retry_at = 0.0
            # Only the pending rows: no sweep, since a child that outlived halt() may still run its task.
            self._attempt(self.clock(), self._finish_pending)
            if self.pending:
                self._sleep_until(min(deadline, self.retry_at))
        if self.pending:
            log.error(
                "%d lost tasks could not be recorded before exit; the next supervisor on node %s "
                "or any live node will recover them",
                len(self.pending),
                self.node,
                extra={"event": events.LOST_UNRECORDED},
            )
        if self.heartbeats:
            try:
                recovery.forget_node(self.node)
                recovery.mark_stopped(self.node)
            except Exception as exc:
                log.warning("Could not remove the heartbeat of node %s: %s", self.node, exc)

    def _sleep_until(self, moment: float) -> None:
        import time

        delay = moment - self.clock()
        if delay > 0:
            time.sleep(delay)
