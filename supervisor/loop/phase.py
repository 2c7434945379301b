"""Where the supervisor is in its life: running, draining after TERM/INT, or stopping at once."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"  # TERM/INT: running tasks finish, nothing new starts
    STOPPING = "stopping"  # second TERM/INT or QUIT: children are killed now
