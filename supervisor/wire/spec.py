"""What the supervisor hands a child to become a worker, and how a child's exit reads.

Shared by both sides of the fork (and by an exec'd child, which gets the spec as JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from task_supervisor.wire.limits import FlowLimit, Rate

# Exit codes of a child; the supervisor reads them to tell a boot failure from a crash.
CHILD_EXIT_OK = 0
CHILD_EXIT_BOOT_FAILED = 78  # could not set Django up or reach the database
CHILD_EXIT_CRASHED = 70  # db_worker raised (for instance the database went away mid-run)
CHILD_EXIT_ORPHANED = 75  # the supervisor was already gone when the child started
# Its task's verdict was refused for want of the node's lease: it exits so that its supervisor
# records the row as a dead worker's (on_worker_lost), or leaves it to the node that recovered it.
CHILD_EXIT_LEASE_LOST = 71

SCHEDULER = "scheduler"  # ChildSpec.role of the scheduler child


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """Everything a child needs to become a db_worker; JSON-able for exec'd children."""

    pool: str
    slot: int
    generation: int
    worker_id: str
    queues: tuple[str, ...]
    backend: str
    interval: float
    max_tasks: int | None
    parent_pid: int
    settings: str
    pythonpath: tuple[str, ...]
    persistent_connections: bool = True
    log_format: str = "text"
    role: str = "worker"  # or "scheduler": the periodic task scheduler instead of db_worker
    leased: bool = False  # the node keeps a lease (heartbeats): run and claim only while it holds
    limits: tuple[FlowLimit, ...] = ()  # [limits."path"], checked at each claim

    def db_worker_argv(self) -> list[str]:
        argv = [
            "--queue-name", ",".join(self.queues),
            "--interval", repr(self.interval),
            "--backend", self.backend,
            "--worker-id", self.worker_id,
            "--no-reload",  # db_worker defaults to autoreload under DEBUG
            "--no-startup-delay",  # the supervisor paces starts itself
            "--skip-checks",  # the supervisor ran Django's system checks once, at its start
        ]  # fmt: skip
        if self.max_tasks is not None:
            argv += ["--max-tasks", str(self.max_tasks)]
        return argv

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildSpec:
        data = json.loads(text)
        data["queues"] = tuple(data["queues"])
        data["pythonpath"] = tuple(data["pythonpath"])
        data["limits"] = tuple(
            FlowLimit(**{**limit, "rate": Rate(**limit["rate"]) if limit["rate"] else None})
            for limit in data.get("limits", ())
        )
        return cls(**data)


@dataclass(frozen=True, slots=True)
class WorkerId:
    """``node:pool:slot:generation``: who claimed a row, written into its ``worker_ids``.

    The node may itself contain colons; pool, slot and generation never do. At most 64
    characters, db_worker's limit (config keeps node and pool names short enough).
    """

    node: str
    pool: str
    slot: int
    generation: int

    def __str__(self) -> str:
        return f"{self.node}:{self.pool}:{self.slot}:{self.generation}"

    @classmethod
    def parse(cls, text: str) -> WorkerId | None:
        """The parts of a worker id this project wrote, or None for anyone else's."""
        parts = str(text).rsplit(":", 3)
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]))
