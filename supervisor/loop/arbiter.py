"""The supervisor's main loop: one thread, one selector, and each turn a list of verbs:

    wait_for_events -> handle_signals -> reap_children -> limits.enforce -> wakeups.tick
    -> manage_pools -> janitor.tick

Signal handlers only queue the signal; children report over pipes; every file descriptor the
selector watches carries its own callback. Nothing here blocks for long, and nothing reads the
time but through the injected clock, so a test can drive ``turn()`` with a fake clock, a fake
spawner and fake process calls.
"""

from __future__ import annotations

import logging
import os
import random
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from task_supervisor import events, exitcodes
from task_supervisor.chores.janitor import Janitor
from task_supervisor.chores.listen import ReadyListener
from task_supervisor.compat import TaskBackend
from task_supervisor.config import Config, PoolConfig
from task_supervisor.loop import reload, reports, signals, status
from task_supervisor.loop.child import Child, describe_status
from task_supervisor.loop.fleet import Fleet
from task_supervisor.loop.flow import FlowWakes
from task_supervisor.loop.lease import Lease
from task_supervisor.loop.limits import Limits
from task_supervisor.loop.liveness import Liveness
from task_supervisor.loop.lostpolicy import DeadChild, lost_task
from task_supervisor.loop.phase import Phase
from task_supervisor.loop.pickup import Pickup
from task_supervisor.loop.pool import Pool, Slot, serves
from task_supervisor.loop.proc import ProcessCalls
from task_supervisor.loop.scaling import Autoscaler
from task_supervisor.loop.scheduling import SchedulerUnit
from task_supervisor.loop.spawn import Spawner
from task_supervisor.loop.wakeups import Wakeups
from task_supervisor.observe import endpoints
from task_supervisor.observe.stats import Stats
from task_supervisor.wire.spec import SCHEDULER

log = logging.getLogger(__name__)

MAX_WAIT = 1.0  # seconds the loop sleeps at most, even with nothing scheduled
FORCE_STOP_GRACE = 5.0  # seconds to reap SIGKILLed children on a forced stop
EXIT_FLUSH_TIME = 5.0  # seconds to record lost tasks before exiting
SPAWN_RETRY = 1.0  # seconds before trying again to fork for a slot whose fork failed


class Supervisor:
    def __init__(
        self,
        config: Config,
        backends: dict[str, TaskBackend] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        schedules: int = 0,
        spawner: Spawner | None = None,
        calls: ProcessCalls | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.pid = os.getpid()
        self.phase = Phase.RUNNING
        self.exit_code = exitcodes.EX_OK
        self.exit_reason = ""
        self.pools: dict[str, Pool] = {name: Pool(pc) for name, pc in config.pools.items()}
        self.children: dict[int, Child] = {}  # every live child, by pid
        self.slot_of: dict[int, tuple[Pool, Slot]] = {}  # pid -> the slot the child fills
        self.successor: dict[int, tuple[Pool, float]] = {}  # pid of a rolled child -> new pool, deadline
        self.signals = signals.SignalQueue()
        self.selector = selectors.DefaultSelector()
        self.spawner = spawner or Spawner(self.close_in_child)
        self.calls = calls or ProcessCalls()
        self.stop_deadline: float | None = None
        self.started_at = clock()
        self.stats = Stats()
        self.limits = Limits(self.stats, self.calls)
        self.autoscaler = Autoscaler(self.stats)
        self.janitor = Janitor(config, backends, clock, self.stats, self.rng) if backends else None
        if self.janitor is not None:
            self.janitor.publish = self.snapshot  # published with each heartbeat, for the dashboard
        self.lease = Lease(config.supervisor.node_timeout, enabled=bool(self.janitor and self.janitor.heartbeats))
        self.lease_seen: float | None = None  # the janitor's last renewal the lease took
        self.liveness = Liveness(self.stats, self.calls)
        self.wakeups = Wakeups(
            _listeners(backends or {}, config.supervisor.listen_database),
            self.selector,
            lambda: self.pools.values(),
            clock,
            Fleet(config.supervisor.node),
        )
        self.flow = FlowWakes(self.wakeups.wake_one)  # children waiting on [limits]
        self.pickup = Pickup(
            self.wakeups, self.janitor, self.stats, config.supervisor.safety_poll, lambda: self.pools.values(), self.rng
        )
        self.servers: list[endpoints._Server] = []
        self.scheduling = SchedulerUnit(schedules, self.stats)
        self.set_scheduler(config.scheduler.enabled)

    # -- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        if not self.start():
            return exitcodes.EX_CONFIG
        try:
            self.recover_own_tasks()
            while not self.finished():
                self.turn()
        finally:
            self.halt()
        log.info("Supervisor stopped: %s", self.exit_reason or "clean exit", extra={"event": events.SUPERVISOR_STOPPED})
        return self.exit_code

    def start(self) -> bool:
        """Listen, install the signal handlers; False (logged) if the endpoints cannot listen."""
        try:
            self.servers = status.start_servers(self)
        except (OSError, endpoints.SupervisorRunning) as exc:
            running = isinstance(exc, endpoints.SupervisorRunning)
            event = events.CONTROL_SOCKET_IN_USE if running else events.HTTP_BIND_FAILED
            log.critical("Cannot listen: %s", exc, extra={"event": event})
            return False
        self.signals.install()
        self.selector.register(self.signals.wake_r, selectors.EVENT_READ, lambda mask: self.signals.drain_wakeups())
        log.info(
            "Supervisor started pid=%s node=%s pools=%s",
            self.pid,
            self.config.supervisor.node,
            ", ".join(f"{p.name}x{p.config.processes}" for p in self.pools.values()),
            extra={"event": events.SUPERVISOR_STARTED},
        )
        return True

    def turn(self, timeout: float | None = None) -> None:
        """One iteration of the loop; ``timeout`` overrides how long to wait for events."""
        self.wait_for_events(self.next_timeout() if timeout is None else timeout)
        self.handle_signals()
        self.reap_children()
        now = self.clock()
        children = list(self.children.values())
        self.limits.enforce(now, children, self.config)
        self.lease.enforce(now, children)
        self.liveness.check(now, children, self.config.supervisor.hung_after)
        self.force_stop_deadline(now)
        connecting = self.wakeups.tick(now) if self.phase is Phase.RUNNING else False
        self.flow.tick(now)
        for server in self.servers:
            server.tick(now)
        if self.phase is Phase.RUNNING:
            # Before the janitor's database work: a dead child's replacement is forked first, and
            # its lost row is finished right after.
            self.manage_pools(now)
            self.check_hopeless()
        if self.janitor is not None and not connecting:
            # One call that may block (each in its time box) per turn, so the endpoints are
            # served between them even while the database hangs.
            self.janitor.busy = {c.spec.worker_id for c in self.children.values() if c.task is not None}
            cancels = self.janitor.tick(now, self.live_worker_ids(), list(self.pools))
            self.take_renewal()
            # Operators' cancels of tasks our children run: TaskCancelled raised in them.
            self.limits.cancel(now, self.children.values(), cancels or [], self.config)
        self.pickup.tick(now, self.children.values(), [*self.flow.waiting, *self.flow.due])

    def take_renewal(self) -> None:
        """A heartbeat went through: the lease holds node_timeout from when it was sent."""
        sent_at = self.janitor.lease_sent_at if self.janitor is not None else None
        if sent_at is not None and sent_at != self.lease_seen:
            self.lease_seen = sent_at
            self.lease.renewed(sent_at)
            self.lease.hand_down(self.children.values())

    def finished(self) -> bool:
        return self.phase is not Phase.RUNNING and not self.children

    def halt(self) -> None:
        """Leave nothing behind, whatever happened: kill and reap every child."""
        for child in list(self.children.values()):
            child.kill("the supervisor is exiting")
        deadline = self.clock() + FORCE_STOP_GRACE
        while self.children and self.clock() < deadline:
            if not self.reap_children():
                self.calls.sleep(0.01)
        if self.janitor is not None:
            self.janitor.flush(self.clock() + EXIT_FLUSH_TIME)
        self.wakeups.close()
        for server in self.servers:
            server.close()
        self.signals.uninstall()
        self.selector.close()
        self.signals.close()

    def close_in_child(self) -> None:
        """In a freshly forked child: drop the supervisor's descriptors."""
        fds = [fd for child in self.children.values() for fd in (child.reader.fd, child.control_fd)]
        fds += self.signals.fds() + self.wakeups.fds()
        fds += [fd for server in self.servers for fd in server.fds()]
        for fd in fds:
            _close(fd)
        try:
            self.selector.close()
        except OSError:
            pass

    # -- observation -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything `status` and the metrics show, as plain JSON-able data."""
        return status.snapshot(self, self.clock(), self.wall())

    # -- events ----------------------------------------------------------------------------

    def next_timeout(self) -> float:
        now = self.clock()
        moments = [now + MAX_WAIT, *(deadline for _, deadline in self.successor.values())]
        moments += [t for server in self.servers if (t := server.next_deadline()) is not None]
        for due in (
            self.limits.next_due(self.children.values(), self.config),
            self.lease.next_due(now),
            self.liveness.next_due() if self.children else None,
            self.janitor.next_due() if self.janitor is not None else None,
            self.wakeups.next_due(now),
            self.flow.next_due(),
            self.stop_deadline,
        ):
            if due is not None:
                moments.append(due)
        if self.phase is Phase.RUNNING:
            moments += [t for p in self.all_pools() if (t := p.next_start()) is not None]
        return max(0.0, min(moments) - now)

    def wait_for_events(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            key.data(mask)

    # -- signals ---------------------------------------------------------------------------

    def handle_signals(self) -> None:
        for signum in self.signals.pop_all():
            if signum == signal.SIGCHLD:
                continue  # reap_children runs on every turn
            if signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGQUIT or self.phase is not Phase.RUNNING:
                self.stop_now(signum)
            else:
                self.drain(signum)

    def drain(self, signum: int) -> None:
        grace = self.config.supervisor.graceful_timeout
        log.info(
            "Received %s: draining (running tasks finish; killed after %.0fs)",
            signals.name(signum),
            grace,
            extra={"event": events.DRAIN_STARTED, "signal": signals.name(signum)},
        )
        self.phase = Phase.DRAINING
        self.exit_reason = f"drained after {signals.name(signum)}"
        now = self.clock()
        for child in self.children.values():
            child.request_stop(now, grace)

    def stop_now(self, signum: int) -> None:
        name = signals.name(signum)
        log.warning(
            "Received %s: stopping now, running tasks are killed",
            name,
            extra={"event": events.FORCED_STOP, "signal": name},
        )
        self.phase = Phase.STOPPING
        self.exit_code = exitcodes.EX_FORCED
        self.exit_reason = f"stopped at once by {name}"
        for child in self.children.values():
            child.kill(f"the supervisor was told to stop at once ({name})")
        self.stop_deadline = self.clock() + FORCE_STOP_GRACE

    def force_stop_deadline(self, now: float) -> None:
        """A forced stop's children that are still there at its deadline are killed again."""
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for child in self.children.values():
                child.kill("the supervisor's forced stop ran out of time")

    def reload(self) -> None:
        """SIGHUP: re-read config.toml and reconcile; a bad config keeps the running one."""
        if self.phase is Phase.RUNNING:
            reload.from_disk(self, self.clock())

    # -- children --------------------------------------------------------------------------

    def reap_children(self) -> bool:
        """Collect every exited child, ours or an orphan (as PID 1 we inherit them)."""
        reaped = False
        while (exited := self.calls.reap()) is not None:
            reaped = True
            pid, wait_status = exited
            child = self.children.pop(pid, None)
            if child is None:
                how = describe_status(wait_status)
                log.debug("Reaped orphan pid=%s (%s)", pid, how, extra={"event": events.ORPHAN_REAPED})
                continue
            reports.read(self, child)  # what it said before dying (boot errors, last task)
            reports.unwatch(self, child)
            self.child_exited(child, wait_status)
        return reaped

    def child_exited(self, child: Child, wait_status: int) -> None:
        now = self.clock()
        reason = child.exited(wait_status)
        how = describe_status(wait_status, child.killed_for)
        child.log_exit(reason, how)
        _close(child.control_fd)
        child.control_fd = -1
        if child.spec.role != SCHEDULER:
            # Whatever the exit, even 0: db_worker can claim a row and then stop on SIGTERM
            # before running it, leaving it RUNNING; the janitor looks for rows of this worker id.
            self.task_lost(child, how)
        self.successor.pop(child.pid, None)
        self.calls.forget(child.pid)
        self.stats.restarts[(child.spec.pool, reason.value)] += 1
        pool_slot = self.slot_of.pop(child.pid, None)
        if pool_slot is not None and pool_slot[1].child is child:
            pool, slot = pool_slot
            pool.child_exited(slot, child, reason, now, self.rng)

    def task_lost(self, child: Child, how: str) -> None:
        """A child died, maybe mid-task: have the janitor finish whatever row it left RUNNING."""
        task = child.task
        if task is not None:
            log.error(
                "Task %s (%s) was running in child pid=%s, which %s",
                task.task_id,
                task.path,
                child.pid,
                how,
                extra={**child.log_extra, "event": events.TASK_LOST, "task_id": task.task_id},
            )
        if self.janitor is None:
            return
        name = child.spec.pool
        pool = self.config.pools.get(name) or PoolConfig(name=name, queues=(name,))
        dead = DeadChild.of(child, how, killed_for_cancel=self.limits.cancel_killed.pop(child.pid, None))
        self.janitor.lost(name, lost_task(dead, pool, self.phase, self.config.supervisor.graceful_timeout))

    def live_worker_ids(self) -> set[str]:
        return {c.spec.worker_id for c in self.children.values()}

    def recover_own_tasks(self) -> None:
        """Before the first child starts: rows this node's earlier incarnation left RUNNING."""
        if self.janitor is not None:
            self.janitor.first_tick(self.clock(), self.live_worker_ids(), list(self.pools))
            self.take_renewal()

    def spawn(self, pool: Pool, slot: Slot, now: float) -> None:
        role = SCHEDULER if pool is self.scheduling.pool else "worker"
        spec = self.spawner.spec(self.config, pool.config, slot.index, role, self.rng, leased=self.lease.enabled)
        try:
            pid, fd, control_fd = self.spawner.spawn(spec, pool.config.start)
        except OSError as exc:
            log.error(
                "Cannot start a child for %s[%d]: %s",
                pool.name,
                slot.index,
                exc,
                extra={"event": events.SPAWN_FAILED, "pool": pool.name, "slot": slot.index},
            )
            slot.failures += 1
            slot.start_after = now + SPAWN_RETRY
            return
        child = Child(spec, pid, fd, now, control_fd, self.calls)
        self.children[pid] = child
        self.slot_of[pid] = (pool, slot)
        slot.child = child
        self.selector.register(fd, selectors.EVENT_READ, lambda mask: reports.read(self, child))
        self.lease.hand_down([child])
        log.info(
            "Started child %s pid=%s", spec.worker_id, pid, extra={**child.log_extra, "event": events.CHILD_STARTED}
        )

    def detach(self, child: Child) -> None:
        """The child no longer fills a slot; when it exits nothing replaces it."""
        self.slot_of.pop(child.pid, None)

    def stop_children(self, children: list[Child], now: float) -> None:
        """Detach these children from their slots and ask them to finish their task and exit."""
        for child in children:
            self.detach(child)
            child.request_stop(now, self.config.supervisor.graceful_timeout)

    # -- pools -----------------------------------------------------------------------------

    def manage_pools(self, now: float) -> None:
        for pool in self.pools.values():
            depth = sum(n for queue, n in self.stats.queue_depth.items() if serves(pool.config, queue))
            if pool.config.autoscaled and (stopped := self.autoscaler.scale(pool, depth, now)) is not None:
                self.stop_children([stopped], now)
        for pool in self.all_pools():
            for slot in pool.due(now):
                self.spawn(pool, slot, now)
        for pid, (pool, deadline) in list(self.successor.items()):
            child = self.children.get(pid)
            if child is None:
                self.successor.pop(pid, None)
            elif pool.at_strength() or now >= deadline:
                self.successor.pop(pid, None)
                child.request_stop(now, self.config.supervisor.graceful_timeout)

    def check_hopeless(self) -> None:
        """Exit when no pool can keep a child up: the fault is not in any one child."""
        if self.pools and all(pool.hopeless() for pool in self.pools.values()):
            reason = next((p.last_error() for p in self.pools.values() if p.last_error()), "")
            self.exit_code = exitcodes.EX_NO_WORKERS
            self.exit_reason = f"no pool could start a worker: {reason or 'every child exited at boot'}"
            log.critical(
                "Giving up: %s", self.exit_reason, extra={"event": events.SUPERVISOR_GAVE_UP, "reason": reason}
            )
            self.phase = Phase.STOPPING

    def all_pools(self) -> list[Pool]:
        """The worker pools, and the scheduler's one-slot pool when it runs."""
        return [*self.pools.values(), *([self.scheduling.pool] if self.scheduling.pool else [])]

    def set_scheduler(self, enabled: bool) -> None:
        self.stop_children(self.scheduling.set(enabled), self.clock())


def _listeners(backends: dict[str, TaskBackend], listen_alias: str = "") -> list[ReadyListener]:
    """One LISTEN connection per PostgreSQL database the pools use (opened through
    ``listen_alias`` when the config names one: a direct connection beside PgBouncer)."""
    from django.db import connections

    seen: dict[str, TaskBackend] = {}
    for backend in backends.values():
        if connections[backend.db_alias].vendor == "postgresql":
            seen.setdefault(backend.db_alias, backend)
    return [ReadyListener(backend, listen_alias) for backend in seen.values()]


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
