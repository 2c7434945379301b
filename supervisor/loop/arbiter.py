"""The supervisor's main loop: one thread, one selector, a list of verbs.

    wait_for_events -> handle_signals -> reap_children -> enforce_deadlines -> manage_pools

Signal handlers only queue the signal; children report over pipes; nothing here blocks for long.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import errno
import json
import logging
import os
import random
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil

from task_supervisor import __version__, events, exitcodes
from task_supervisor.chores.janitor import Janitor
from task_supervisor.chores.listen import ReadyListener
from task_supervisor.chores.recovery import TASK_TIMEOUT, FailedTask, LostTask
from task_supervisor.compat import TaskBackend
from task_supervisor.config import Config, ConfigError, PoolConfig, load_config
from task_supervisor.loop import signals
from task_supervisor.loop.child import Child, ChildState, ExitReason, describe_status
from task_supervisor.loop.pool import Pool, Slot, recycle_after
from task_supervisor.loop.scaling import ScaleState, decide
from task_supervisor.loop.spawn import Spawner
from task_supervisor.observe import endpoints, exposition
from task_supervisor.observe.stats import Stats
from task_supervisor.wire.spec import SCHEDULER, ChildSpec

log = logging.getLogger(__name__)

MAX_WAIT = 1.0  # seconds the loop sleeps at most, even with nothing scheduled
FORCE_STOP_GRACE = 5.0  # seconds to reap SIGKILLed children on a forced stop
MEMORY_CHECK_INTERVAL = 1.0  # seconds between RSS checks of children of pools with max_memory
EXIT_FLUSH_TIME = 5.0  # seconds to record lost tasks before exiting


class Phase(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"  # TERM/INT: running tasks finish, nothing new starts
    STOPPING = "stopping"  # second TERM/INT or QUIT: children are killed now


class Supervisor:
    def __init__(
        self,
        config: Config,
        backends: dict[str, TaskBackend] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        schedules: int = 0,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.pid = os.getpid()
        self.phase = Phase.RUNNING
        self.exit_code = exitcodes.EX_OK
        self.exit_reason = ""
        self.pools: dict[str, Pool] = {name: Pool(pc) for name, pc in config.pools.items()}
        self.children: dict[int, Child] = {}  # every live child, by pid
        self.slot_of: dict[int, tuple[Pool, Slot]] = {}  # pid -> the slot the child fills
        self.successor: dict[int, tuple[Pool, float]] = {}  # pid of a rolled child -> new pool, deadline
        self.generations: dict[tuple[str, int], int] = {}
        self.signals = signals.SignalQueue()
        self.selector = selectors.DefaultSelector()
        self.spawner = Spawner(self.close_in_child)
        self.stop_deadline: float | None = None
        self.started_at = clock()
        self.stats = Stats()
        self.janitor = Janitor(config, backends, clock, self.stats, self.rng) if backends else None
        self.listeners = _listeners(backends or {})
        self.next_memory_check = 0.0
        self.servers: list[endpoints._Server] = []
        self.processes: dict[int, psutil.Process] = {}  # pid -> psutil handle, for status
        self.scale_states: dict[str, ScaleState] = {}
        self.schedules = schedules  # enabled schedules in settings.PERIODIC_TASKS
        self.scheduler: Pool | None = None  # the scheduler child's one-slot pool, when it runs
        self.schedule_info: dict[str, dict[str, Any]] = {}  # name -> last slot, lag, next, as reported
        self.set_scheduler(config.scheduler.enabled)

    # -- life cycle ------------------------------------------------------------------------

    def start_servers(self) -> None:
        """The HTTP listener and the control socket; OSError or SupervisorRunning if they cannot."""
        address = self.config.supervisor.http
        if address:
            metrics = exposition.Metrics(self.snapshot, self.stats)
            routes = {
                "/livez": lambda: exposition.livez(self.snapshot()),
                "/readyz": lambda: exposition.readyz(self.snapshot()),
                "/metrics": metrics.response,
            }
            self.servers.append(endpoints.HttpServer(address, routes, self.clock))
        path = self.config.supervisor.control_socket or endpoints.default_socket_path(self.config.supervisor.node)
        self.servers.append(endpoints.ControlServer(path, self.control_answer, self.clock))
        for server in self.servers:
            server.start(self.selector)

    def control_answer(self, command: str) -> bytes:
        if command == "status":
            return json.dumps(self.snapshot()).encode()
        return json.dumps({"error": f"unknown command {command!r}; try status"}).encode()

    def run(self) -> int:
        try:
            self.start_servers()
        except (OSError, endpoints.SupervisorRunning) as exc:
            for server in self.servers:
                server.close()
            log.critical("Cannot listen: %s", exc, extra={"event": events.HTTP_BIND_FAILED})
            return exitcodes.EX_CONFIG
        self.signals.install()
        self.selector.register(self.signals.wake_r, selectors.EVENT_READ, None)
        log.info(
            "Supervisor started pid=%s node=%s pools=%s",
            self.pid,
            self.config.supervisor.node,
            ", ".join(f"{p.name}x{p.config.processes}" for p in self.pools.values()),
            extra={"event": events.SUPERVISOR_STARTED},
        )
        try:
            self.recover_own_tasks()
            while not self.finished():
                self.wait_for_events(self.next_timeout())
                self.handle_signals()
                self.reap_children()
                now = self.clock()
                self.enforce_deadlines(now)
                self.watch_memory(now)
                connecting = self.listen(now)
                for server in self.servers:
                    server.tick(now)
                if self.phase is Phase.RUNNING:
                    # Before the janitor's database work: a dead child's replacement is forked
                    # first, and its lost row is finished right after.
                    self.manage_pools(now)
                    self.check_hopeless()
                if self.janitor is not None and not connecting:
                    # One call that may block (each under its deadline) per turn, so the
                    # endpoints are served between them even while the database hangs.
                    self.janitor.tick(now, self.live_worker_ids(), list(self.pools))
        finally:
            self.halt()
        log.info("Supervisor stopped: %s", self.exit_reason or "clean exit", extra={"event": events.SUPERVISOR_STOPPED})
        return self.exit_code

    def finished(self) -> bool:
        return self.phase is not Phase.RUNNING and not self.children

    def halt(self) -> None:
        """Leave nothing behind, whatever happened: kill and reap every child."""
        for child in list(self.children.values()):
            child.kill()
        deadline = self.clock() + FORCE_STOP_GRACE
        while self.children and self.clock() < deadline:
            if not self.reap_children():
                time.sleep(0.01)
        if self.janitor is not None:
            self.janitor.flush(self.clock() + EXIT_FLUSH_TIME)
        for listener in self.listeners:
            listener.close()
        for server in self.servers:
            server.close()
        self.signals.uninstall()
        self.selector.close()
        self.signals.close()

    def close_in_child(self) -> None:
        """In a freshly forked child: drop the supervisor's descriptors."""
        for child in self.children.values():
            _close(child.reader.fd)
            _close(child.control_fd)
        for fd in self.signals.fds():
            _close(fd)
        for listener in self.listeners:
            if (fd := listener.fileno()) is not None:
                _close(fd)
        for server in self.servers:
            for fd in server.fds():
                _close(fd)
        try:
            self.selector.close()
        except OSError:
            pass

    # -- events ----------------------------------------------------------------------------

    def next_timeout(self) -> float:
        now = self.clock()
        moments = [now + MAX_WAIT]
        moments += [c.kill_at for c in self.children.values() if c.kill_at is not None]
        moments += [deadline for _, deadline in self.successor.values()]
        moments += [t for c in self.children.values() if (t := self.timeout_moment(c)) is not None]
        if self.janitor is not None and (due := self.janitor.next_due()) is not None:
            moments.append(due)
        moments += [t for server in self.servers if (t := server.next_deadline()) is not None]
        for listener in self.listeners:
            if (later := listener.next_due_in()) is not None:
                moments.append(now + later)
            if listener.conn is None:
                moments.append(listener.retry_at)
        if self.stop_deadline is not None:
            moments.append(self.stop_deadline)
        if self.phase is Phase.RUNNING:
            moments += [t for p in self.all_pools() if (t := p.next_start()) is not None]
        return max(0.0, min(moments) - now)

    def wait_for_events(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            if hasattr(key.data, "on_event"):
                key.data.on_event(mask)
            elif key.data is None:
                self.signals.drain_wakeups()
            elif isinstance(key.data, Child):
                self.read_reports(key.data)
            elif isinstance(key.data, ReadyListener):
                fd = key.fd
                for queue in key.data.read():
                    self.wake_one(queue, self.clock())
                if key.data.conn is None:
                    self.selector.unregister(fd)

    def read_reports(self, child: Child) -> None:
        """Read what a child said; at EOF stop watching its pipe."""
        while child.reader.fd >= 0:
            try:
                data = os.read(child.reader.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    log.warning("Reading the pipe of pid=%s failed: %s", child.pid, exc)
                data = b""
            if not data:
                self.unwatch(child)
                return
            now, wall = self.clock(), time.time()
            for message in child.reader.feed(data):
                self.on_message(child, message, now, wall)

    def timeout_for(self, pool: str) -> Callable[[str], float | None]:
        default = self.config.pools[pool].timeout if pool in self.config.pools else None
        return lambda path: self.config.task_timeouts.get(path, default)

    def on_message(self, child: Child, message: dict, now: float, wall: float) -> None:
        before = child.task
        child.handle_message(message, now, wall, self.timeout_for(child.spec.pool))
        event, pool = message.get("event"), child.spec.pool
        if child.spec.role == SCHEDULER:
            self.on_scheduler_message(message)
        elif event == "task_started":
            self.stats.tasks_started[pool] += 1
        elif event == "task_finished":
            status = str(message.get("status", ""))
            self.stats.tasks_finished[(pool, status)] += 1
            if status == "FAILED" and before is not None and self.janitor is not None:
                failed = FailedTask(
                    child.spec.worker_id, before.task_id, before.path, str(message.get("exception", ""))
                )
                self.janitor.failed(pool, failed)
        if event == "task_finished" and child.recycle_after_task:
            log.info(
                "Child %s passed max_memory; recycling it after its task",
                child.spec.worker_id,
                extra={**child.log_extra, "event": events.CHILD_RECYCLE_MEMORY},
            )
            child.request_stop(now, self.config.supervisor.graceful_timeout)
        extra = child.log_extra
        if child.ready_at == now and message.get("event") == "ready":
            pool_slot = self.slot_of.get(child.pid)
            if pool_slot:
                pool_slot[0].ever_up = True
            log.debug("Child %s ready", child.spec.worker_id, extra={**extra, "event": events.CHILD_READY})
        if child.task is not None and child.task is not before:
            log.debug(
                "Child pid=%s started task %s",
                child.pid,
                child.task.task_id,
                extra={**extra, "event": events.TASK_STARTED, "task_id": child.task.task_id},
            )

    def on_scheduler_message(self, message: dict) -> None:
        event = message.get("event")
        if event == "ready":
            for entry in message.get("schedules", []):
                self.schedule_info.setdefault(str(entry.get("name")), {}).update(
                    when=entry.get("when"), next=entry.get("next")
                )
        elif event == "slot_fired":
            name, outcome = str(message.get("schedule")), str(message.get("outcome"))
            self.stats.slots[(name, outcome)] += 1
            info = self.schedule_info.setdefault(name, {})
            info["next"] = message.get("next")
            if outcome == "fired":
                lag = float(message.get("lag") or 0.0)
                self.stats.slot_lag[name] = lag
                self.stats.slot_lag_total[name] += lag
                info.update(last_slot=message.get("slot"), last_task_id=message.get("task_id"), last_lag=lag)

    def listen(self, now: float) -> bool:
        """Keep the LISTEN connections up, and wake children for tasks whose run_after came;
        True when it tried to connect this turn (a call that may block up to its deadline)."""
        if self.phase is not Phase.RUNNING:
            return False
        connecting = False
        for listener in self.listeners:
            if listener.conn is None and now >= listener.retry_at and not connecting:
                connecting = True
                if listener.connect(now):
                    self.selector.register(listener.fileno(), selectors.EVENT_READ, listener)
            for queue in listener.due():
                self.wake_one(queue, now)
        return connecting

    def wake_one(self, queue: str, now: float) -> None:
        """Wake the idle child of a pool serving ``queue`` that was woken least recently."""
        idle = [
            child
            for pool in self.pools.values()
            if queue in pool.config.queues or "*" in pool.config.queues
            for child in pool.children()
            if child.state is ChildState.IDLE
        ]
        if idle:
            min(idle, key=lambda c: c.woken_at).wake(now)

    def unwatch(self, child: Child) -> None:
        """Stop watching the child's pipe and close it, once: a descriptor number closed twice
        may by then belong to something else (a client's socket, another child's pipe)."""
        fd, child.reader.fd = child.reader.fd, -1
        if fd < 0:
            return
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        _close(fd)

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

    def reap_children(self) -> bool:
        """Collect every exited child, ours or an orphan (as PID 1 we inherit them)."""
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return reaped
            if pid == 0:
                return reaped
            reaped = True
            child = self.children.pop(pid, None)
            if child is None:
                log.debug(
                    "Reaped orphan pid=%s (%s)", pid, describe_status(status), extra={"event": events.ORPHAN_REAPED}
                )
                continue
            self.read_reports(child)  # what it said before dying (boot errors, last task)
            self.unwatch(child)
            self.child_exited(child, status)

    # -- children --------------------------------------------------------------------------

    def child_exited(self, child: Child, status: int) -> None:
        now = self.clock()
        reason = child.exited(status)
        extra = {**child.log_extra, "event": f"child_{reason.value}", "reason": reason.value}
        how = describe_status(status)
        if reason is ExitReason.STOPPED:
            log.info("Child %s %s after stop", child.spec.worker_id, how, extra=extra)
        elif reason is ExitReason.RECYCLED:
            log.info("Child %s recycled after %d tasks", child.spec.worker_id, child.tasks_done, extra=extra)
        elif reason is ExitReason.BOOT_FAILED:
            log.error(
                "Child %s failed to boot (%s): %s",
                child.spec.worker_id,
                how,
                child.boot_error or "no reason given",
                extra=extra,
            )
        elif status and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            log.error("Child %s %s", child.spec.worker_id, how, extra=extra)
        else:
            log.warning("Child %s %s", child.spec.worker_id, how, extra=extra)
        _close(child.control_fd)
        child.control_fd = -1
        if child.spec.role != SCHEDULER:
            # Whatever the exit, even 0: db_worker can claim a row and then stop on SIGTERM
            # before running it, leaving it RUNNING; the janitor looks for rows of this worker id.
            self.task_lost(child, how)
        self.successor.pop(child.pid, None)
        self.processes.pop(child.pid, None)
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
        wid = child.spec.worker_id
        pool = self.config.pools.get(child.spec.pool)
        if task is None and child.killed_for_timeout is None:
            # No task started in it: any RUNNING row of its worker id was claimed, never run, so
            # it goes back to READY whatever on_worker_lost says (nothing of it ran twice).
            message = f"The worker that claimed this task ({wid}, pid {child.pid}) {how} before starting it."
            lost = dataclasses.replace(self.janitor.lost_from_worker(wid, message), on_worker_lost="requeue")
        elif child.killed_for_timeout is not None and pool is not None:
            killed = child.killed_for_timeout
            lost = LostTask(
                worker_id=wid,
                task_id=killed.task_id,
                exception_path=TASK_TIMEOUT,
                message=f"Task {killed.path} ran past its timeout of {killed.timeout:g}s and did not stop "
                f"within kill_after {pool.kill_after:g}s, so its worker ({wid}, pid {child.pid}) was killed.",
            )
        else:
            message = f"The worker running this task ({wid}, pid {child.pid}) {how}."
            if child.killed and self.phase is Phase.DRAINING:
                message += (
                    f" It was killed at the end of graceful_timeout "
                    f"({self.config.supervisor.graceful_timeout:g}s) while the supervisor drained."
                )
            elif child.killed and self.phase is Phase.STOPPING:
                message += " It was killed when the supervisor was told to stop at once."
            elif "SIGKILL" in how:
                message += " If it ran out of memory, raise the memory limit or set the pool's max_memory."
            lost = self.janitor.lost_from_worker(wid, message)
        self.janitor.lost(child.spec.pool, lost)

    def live_worker_ids(self) -> set[str]:
        return {c.spec.worker_id for c in self.children.values()}

    def recover_own_tasks(self) -> None:
        """Before the first child starts: rows this node's earlier incarnation left RUNNING."""
        if self.janitor is None:
            return
        try:
            self.janitor.recover_own(self.live_worker_ids())
        except Exception as exc:
            log.error(
                "Could not look for tasks left RUNNING by an earlier run of node %s: %s",
                self.config.supervisor.node,
                exc,
                extra={"event": events.DB_ERROR},
            )
        self.janitor.tick(self.clock(), self.live_worker_ids(), list(self.pools))

    def spawn(self, pool: Pool, slot: Slot, now: float) -> None:
        key = (pool.name, slot.index)
        generation = self.generations.get(key, 0) + 1
        self.generations[key] = generation
        spec = self.child_spec(pool.config, slot.index, generation, SCHEDULER if pool is self.scheduler else "worker")
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
            slot.start_after = now + 1.0
            return
        child = Child(spec, pid, fd, now, control_fd)
        self.children[pid] = child
        self.slot_of[pid] = (pool, slot)
        slot.child = child
        self.selector.register(fd, selectors.EVENT_READ, child)
        log.info(
            "Started child %s pid=%s", spec.worker_id, pid, extra={**child.log_extra, "event": events.CHILD_STARTED}
        )

    def child_spec(self, pool: PoolConfig, slot: int, generation: int, role: str = "worker") -> ChildSpec:
        return ChildSpec(
            pool=pool.name,
            slot=slot,
            generation=generation,
            worker_id=f"{self.config.supervisor.node}:{pool.name}:{slot}:{generation}",
            queues=pool.queues,
            backend=pool.backend,
            interval=pool.interval,
            max_tasks=recycle_after(pool.max_tasks, self.rng),
            parent_pid=self.pid,
            settings=self.config.django.settings,
            pythonpath=tuple(self.config.pythonpath_dirs()),
            persistent_connections=pool.persistent_connections,
            log_format=self.config.supervisor.log_format,
            role=role,
        )

    def all_pools(self) -> list[Pool]:
        """The worker pools, and the scheduler's one-slot pool when it runs."""
        return [*self.pools.values(), *([self.scheduler] if self.scheduler else [])]

    def set_scheduler(self, enabled: bool) -> None:
        """Run the scheduler child when enabled and there is something to schedule; stop it if not."""
        if enabled and self.schedules and self.scheduler is None:
            self.scheduler = Pool(PoolConfig(name=SCHEDULER, queues=(), processes=1, max_processes=1))
        elif not (enabled and self.schedules) and self.scheduler is not None:
            for child in self.scheduler.children():
                self.detach(child)
                child.request_stop(self.clock(), self.config.supervisor.graceful_timeout)
            self.scheduler = None

    def autoscale(self, pool: Pool, now: float) -> None:
        config = pool.config
        queues = config.queues
        depth = sum(n for q, n in self.stats.queue_depth.items() if "*" in queues or q in queues)
        children = pool.children()
        busy = sum(1 for c in children if c.state is ChildState.BUSY)
        idle = sum(1 for c in children if c.state is ChildState.IDLE)
        current = len(pool.slots)
        state = self.scale_states.setdefault(pool.name, ScaleState())
        want = decide(
            now, current, config.processes, config.max_processes, busy, idle, depth, state, config.scale_cooldown
        )
        if want > current:
            pool.grow(want)
            state.last_up = now
        elif want < current and (child := pool.remove_idle_slot()) is not None:
            self.detach(child)
            child.request_stop(now, self.config.supervisor.graceful_timeout)
            state.last_down = now
        else:
            return
        direction = "up" if want > current else "down"
        self.stats.scale_events[(pool.name, direction)] += 1
        log.info(
            "Pool %s scaled %s from %d to %d (READY depth %d, busy %d, idle %d)",
            pool.name,
            direction,
            current,
            len(pool.slots),
            depth,
            busy,
            idle,
            extra={"event": events.POOL_SCALED, "pool": pool.name, "direction": direction},
        )

    def manage_pools(self, now: float) -> None:
        for pool in self.pools.values():
            if pool.config.autoscaled:
                self.autoscale(pool, now)
            for slot in pool.due(now):
                self.spawn(pool, slot, now)
        if self.scheduler is not None:
            for slot in self.scheduler.due(now):
                self.spawn(self.scheduler, slot, now)
        for pid, (pool, deadline) in list(self.successor.items()):
            child = self.children.get(pid)
            if child is None:
                self.successor.pop(pid, None)
            elif pool.at_strength() or now >= deadline:
                self.successor.pop(pid, None)
                child.request_stop(now, self.config.supervisor.graceful_timeout)

    def timeout_moment(self, child: Child) -> float | None:
        """When the child's current task next needs attention: soft timeout, then hard kill."""
        task = child.task
        if task is None or task.timeout is None or child.killed:
            return None
        if child.timed_out is not task:
            return task.since + task.timeout
        pool = self.config.pools.get(child.spec.pool)
        return task.since + task.timeout + (pool.kill_after if pool else 10.0)

    def enforce_timeouts(self, now: float) -> None:
        for child in list(self.children.values()):
            moment = self.timeout_moment(child)
            if moment is None or now < moment:
                continue
            task = child.task
            assert task is not None
            extra = {**child.log_extra, "task_id": task.task_id}
            if child.timed_out is not task:
                log.warning(
                    "Task %s (%s) ran past its timeout of %gs; raising TaskTimeout in it",
                    task.task_id,
                    task.path,
                    task.timeout,
                    extra={**extra, "event": events.TASK_TIMEOUT},
                )
                child.tell_timeout()
                self.stats.timeouts[(child.spec.pool, "soft")] += 1
            else:
                log.error(
                    "Task %s (%s) did not stop after TaskTimeout; killing child pid=%s",
                    task.task_id,
                    task.path,
                    child.pid,
                    extra={**extra, "event": events.TASK_TIMEOUT_KILL},
                )
                child.killed_for_timeout = task
                child.kill()
                self.stats.timeouts[(child.spec.pool, "hard")] += 1

    def watch_memory(self, now: float) -> None:
        """Recycle children past their pool's max_memory: idle ones now, busy ones after the task."""
        if now < self.next_memory_check:
            return
        self.next_memory_check = now + MEMORY_CHECK_INTERVAL
        for child in list(self.children.values()):
            pool = self.config.pools.get(child.spec.pool)
            if pool is None or pool.max_memory is None or not child.up or child.recycle_after_task:
                continue
            try:
                rss = psutil.Process(child.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss <= pool.max_memory:
                continue
            log.warning(
                "Child %s uses %d MiB, over max_memory %d MiB",
                child.spec.worker_id,
                rss >> 20,
                pool.max_memory >> 20,
                extra={**child.log_extra, "event": events.CHILD_OVER_MEMORY},
            )
            if child.state is ChildState.BUSY:
                child.recycle_after_task = True
            else:
                child.request_stop(now, self.config.supervisor.graceful_timeout)

    def enforce_deadlines(self, now: float) -> None:
        self.enforce_timeouts(now)
        for child in list(self.children.values()):
            if child.kill_at is not None and now >= child.kill_at and not child.killed:
                log.warning(
                    "Child %s did not stop within its grace period; killing it",
                    child.spec.worker_id,
                    extra={**child.log_extra, "event": events.CHILD_KILLED},
                )
                child.kill()
        if self.stop_deadline is not None and now >= self.stop_deadline and self.children:
            for child in self.children.values():
                if not child.killed:
                    child.kill()

    def check_hopeless(self) -> None:
        """Exit when no pool can keep a child up: the fault is not in any one child."""
        if self.pools and all(pool.hopeless() for pool in self.pools.values()):
            reason = next((p.last_error() for p in self.pools.values() if p.last_error()), "")
            self.exit_code = exitcodes.EX_NO_WORKERS
            self.exit_reason = f"no pool could start a worker: {reason or 'every child exited at boot'}"
            log.critical("Giving up: %s", self.exit_reason, extra={"event": events.SUPERVISOR_GAVE_UP})
            self.phase = Phase.STOPPING

    # -- signals ---------------------------------------------------------------------------

    def drain(self, signum: int) -> None:
        grace = self.config.supervisor.graceful_timeout
        log.info(
            "Received %s: draining (running tasks finish; killed after %.0fs)",
            signals.name(signum),
            grace,
            extra={"event": events.DRAIN_STARTED},
        )
        self.phase = Phase.DRAINING
        self.exit_reason = f"drained after {signals.name(signum)}"
        now = self.clock()
        for child in self.children.values():
            child.request_stop(now, grace)

    def stop_now(self, signum: int) -> None:
        log.warning(
            "Received %s: stopping now, running tasks are killed",
            signals.name(signum),
            extra={"event": events.FORCED_STOP},
        )
        self.phase = Phase.STOPPING
        self.exit_code = exitcodes.EX_FORCED
        self.exit_reason = f"stopped at once by {signals.name(signum)}"
        for child in self.children.values():
            child.kill()
        self.stop_deadline = self.clock() + FORCE_STOP_GRACE

    def reload(self) -> None:
        """SIGHUP: re-read config.toml and reconcile; a bad config keeps the running one."""
        if self.phase is not Phase.RUNNING:
            return
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error(
                    "Reload refused, keeping the running config: %s", problem, extra={"event": events.RELOAD_FAILED}
                )
            return
        if new.django != self.config.django or new.supervisor.node != self.config.supervisor.node:
            log.warning(
                "[django] and supervisor.node changes need a restart; applying the rest",
                extra={"event": events.RELOAD_PARTIAL},
            )
        now = self.clock()
        old_pools, self.config = self.pools, new
        if self.janitor is not None:
            self.janitor.config = new
        self.pools = {}
        for name, pool_config in new.pools.items():
            old = old_pools.pop(name, None)
            if old is None:
                self.pools[name] = Pool(pool_config)
                log.info("Pool %s added", name, extra={"event": events.POOL_ADDED, "pool": name})
            elif old.config == pool_config:
                self.pools[name] = old
            elif _same_but_size(old.config, pool_config):
                self.pools[name] = old
                old.config = pool_config
                for child in old.resize(pool_config.processes):
                    self.detach(child)
                    child.request_stop(now, new.supervisor.graceful_timeout)
                log.info(
                    "Pool %s resized to %d",
                    name,
                    pool_config.processes,
                    extra={"event": events.POOL_RESIZED, "pool": name},
                )
            else:
                self.pools[name] = Pool(pool_config)
                for child in old.children():
                    self.detach(child)
                    self.successor[child.pid] = (self.pools[name], now + new.supervisor.graceful_timeout)
                log.info(
                    "Pool %s changed: rolling its children", name, extra={"event": events.POOL_ROLLED, "pool": name}
                )
        for name, old in old_pools.items():
            for child in old.children():
                self.detach(child)
                child.request_stop(now, new.supervisor.graceful_timeout)
            log.info("Pool %s removed", name, extra={"event": events.POOL_REMOVED, "pool": name})
        self.set_scheduler(new.scheduler.enabled)
        log.info("Reloaded %s", new.path, extra={"event": events.RELOADED})

    def snapshot(self) -> dict[str, Any]:
        """Everything `status` and the metrics show, as plain JSON-able data."""
        now, wall = self.clock(), time.time()
        return {
            "node": self.config.supervisor.node,
            "pid": self.pid,
            "version": __version__,
            "phase": self.phase.value,
            "uptime": round(now - self.started_at, 3),
            "started_at": _iso(wall - (now - self.started_at)),
            "database": {
                "ok": self.janitor.db_ok if self.janitor else True,
                "error": self.janitor.db_error if self.janitor else None,
            },
            "pools": [self.pool_snapshot(pool, now, wall) for pool in self.pools.values()],
            "scheduler": self.scheduler_snapshot(now, wall),
            "heartbeat": {
                "enabled": bool(self.janitor and self.janitor.heartbeats),
                "last_beat": self.janitor.last_beat if self.janitor else None,
                "node_timeout": self.config.supervisor.node_timeout,
            },
            "retries": [
                {"task_id": task_id, "path": path, "attempts": attempts, "next_attempt_at": when}
                for task_id, (path, attempts, when) in (self.janitor.retries_scheduled.items() if self.janitor else ())
            ],
        }

    def scheduler_snapshot(self, now: float, wall: float) -> dict[str, Any] | None:
        if self.scheduler is None:
            return None
        child = next(iter(self.scheduler.children()), None)
        return {
            "state": child.state.value if child else ("backing off" if self.scheduler.backing_off(now) else "starting"),
            "pid": child.pid if child else None,
            "restarts": self.scheduler.restarts,
            "last_error": self.scheduler.last_error(),
            "schedules": [{"name": name, **info} for name, info in sorted(self.schedule_info.items())],
        }

    def pool_snapshot(self, pool: Pool, now: float, wall: float) -> dict[str, Any]:
        return {
            "name": pool.name,
            "queues": list(pool.config.queues),
            "desired": len(pool.slots),
            "min": pool.config.processes,
            "max": pool.config.max_processes,
            "at_strength": pool.at_strength(),
            "backing_off": pool.backing_off(now),
            "restarts": pool.restarts,
            "last_error": pool.last_error(),
            "children": [self.child_snapshot(slot.child, now, wall) for slot in pool.slots.values() if slot.child],
        }

    def child_snapshot(self, child: Child, now: float, wall: float) -> dict[str, Any]:
        rss = cpu = None
        try:
            # The same Process object across calls: cpu_percent measures since the last call.
            proc = self.processes.get(child.pid) or self.processes.setdefault(child.pid, psutil.Process(child.pid))
            rss, cpu = proc.memory_info().rss, proc.cpu_percent(interval=None)
        except psutil.Error:
            pass
        task = child.task
        return {
            "slot": child.spec.slot,
            "pid": child.pid,
            "state": child.state.value,
            "worker_id": child.spec.worker_id,
            "generation": child.spec.generation,
            "started_at": _iso(wall - (now - child.started_at)),
            "tasks_done": child.tasks_done,
            "rss": rss,
            "cpu_percent": cpu,
            "task": None
            if task is None
            else {
                "id": task.task_id,
                "path": task.path,
                "running_for": round(now - task.since, 3),
                "timeout": task.timeout,
            },
        }

    def detach(self, child: Child) -> None:
        """The child no longer fills a slot; when it exits nothing replaces it."""
        self.slot_of.pop(child.pid, None)


def _listeners(backends: dict[str, TaskBackend]) -> list[ReadyListener]:
    """One LISTEN connection per PostgreSQL database the pools use."""
    from django.db import connections

    seen: dict[str, TaskBackend] = {}
    for backend in backends.values():
        if connections[backend.db_alias].vendor == "postgresql":
            seen.setdefault(backend.db_alias, backend)
    return [ReadyListener(backend) for backend in seen.values()]


def _same_but_size(old: PoolConfig, new: PoolConfig) -> bool:
    from dataclasses import replace

    return replace(old, processes=new.processes, max_processes=new.max_processes) == new


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
