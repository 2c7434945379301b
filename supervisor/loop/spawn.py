"""Starting children: the one place the supervisor forks, and where worker ids are made."""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
from collections.abc import Callable

from task_supervisor import sentry
from task_supervisor.config import Config, PoolConfig
from task_supervisor.loop.pool import recycle_after
from task_supervisor.wire.spec import CHILD_EXIT_CRASHED, SCHEDULER, ChildSpec, WorkerId
from task_supervisor.worker.run import exec_child, prepare_after_fork, run_child


class ForkWithThreadsError(RuntimeError):
    """Forking now would copy a live thread's locks into the child."""


class Spawner:
    """Forks children; ``close_in_child`` closes the supervisor's own descriptors in each."""

    def __init__(
        self, close_in_child: Callable[[], None] = lambda: None, wall: Callable[[], float] = time.time
    ) -> None:
        self.close_in_child = close_in_child
        self.wall = wall
        self.generations: dict[tuple[str, int], int] = {}  # (pool, slot) -> last generation started

    def spec(
        self, config: Config, pool: PoolConfig, slot: int, role: str, rng: random.Random, leased: bool = False
    ) -> ChildSpec:
        """The next child of a slot: a new generation, so its worker id differs from every earlier one's.

        Generations count up from the wall clock in tenths of a second, so a worker id never
        repeats across the supervisor's restarts either: an orphan of an earlier incarnation still
        finishing its task can never pass the fence of a new child (or be mistaken for it).
        """
        key = (pool.name, slot)
        generation = max(self.generations.get(key, 0) + 1, int(self.wall() * 10))
        self.generations[key] = generation
        return ChildSpec(
            pool=pool.name,
            slot=slot,
            generation=generation,
            worker_id=str(WorkerId(config.supervisor.node, pool.name, slot, generation)),
            queues=pool.queues,
            backend=pool.backend,
            interval=pool.interval,
            max_tasks=recycle_after(pool.max_tasks, rng),
            parent_pid=os.getpid(),
            settings=config.django.settings,
            pythonpath=tuple(config.pythonpath_dirs()),
            persistent_connections=pool.persistent_connections,
            log_format=config.supervisor.log_format,
            role=role,
            leased=leased and role != SCHEDULER,
            limits=tuple(config.limits.values()) if role != SCHEDULER else (),
        )

    def spawn(self, spec: ChildSpec, start: str) -> tuple[int, int, int]:
        """Start a child; returns its pid, the read end of its report pipe and the write end
        of its control pipe."""
        _prepare_fork()
        read_fd, write_fd = os.pipe()  # child -> supervisor: reports
        control_r, control_w = os.pipe()  # supervisor -> child: timeout notices
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                os.close(read_fd)
                os.close(control_w)
                prepare_after_fork(spec.parent_pid)
                self.close_in_child()
                if start == "exec":
                    exec_child(spec, write_fd, control_r)
                run_child(spec, write_fd, control_r)
            finally:
                os._exit(CHILD_EXIT_CRASHED)
        os.close(write_fd)
        os.close(control_r)
        os.set_blocking(read_fd, False)
        os.set_blocking(control_w, False)
        return pid, read_fd, control_w


def _prepare_fork() -> None:
    """No open database connection and no other thread may cross a fork."""
    sentry.quiesce()  # the Sentry SDK's sender thread, started by a report of the supervisor's
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
        raise ForkWithThreadsError(f"cannot fork a worker while other threads run ({names}).")
    from django.db import connections

    # A connection inherited by a child would be closed twice, breaking the parent's socket.
    connections.close_all()
    # Move every live object to the permanent generation: the child's collector then never
    # writes to their headers, so the pages holding Django, the project and their caches stay
    # shared copy-on-write instead of being copied into each child at its first collection.
    # The collect before it keeps garbage out; after the first fork it only scans what is new.
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
