"""What a child tells the supervisor over its inherited pipe: one JSON object per line.

Lines stay well under PIPE_BUF (4096 bytes) so each write is atomic and a reader never sees half
a message from a child that died mid-write.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

MAX_LINE_BYTES = 3000  # below PIPE_BUF, with room to spare

READY = "ready"  # booted: Django set up, database answers; db_worker starts polling
BOOT_FAILED = "boot_failed"  # could not boot; "reason" says why in one line
TASK_STARTED = "task_started"  # "task_id", "path"
TASK_FINISHED = "task_finished"  # "task_id", "status"
PONG = "pong"  # "seq": the answer to a ping on the control pipe
LEASE_EXPIRED = "lease_expired"  # "task_id": the child stopped its task, its lease ran out
TASK_FENCED = "task_fenced"  # "task_id", "owner", "status": a finish not written, the row was no longer ours
EMPTY = "empty"  # a claim found no READY row: with TASK_STARTED, the claim attempts (fleet figures)
# "paths", "queues", "due" (epoch or null), "waiting" (for a slot), "keys", "more": a claim found
# nothing eligible because limits held rows back (worker/flow.py)
HELD = "held"
# From the scheduler child:
SLOT_FIRED = "slot_fired"  # "schedule", "slot", "outcome", "lag", "task_id", "next"
# "schedules": as in ready ("name", "when", "next", "enabled", "override"), after the run-time
# overrides (schedules disable/enable) changed
SCHEDULES = "schedules"


class Reporter:
    """The child's end: writes messages, and never lets a dead supervisor kill the task."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, default=str, separators=(",", ":"))
        data = line.encode()
        if len(data) >= MAX_LINE_BYTES:
            data = json.dumps({"event": event, **_shorten(fields)}, default=str).encode()
        try:
            os.write(self.fd, data + b"\n")
        except OSError:
            # The supervisor is gone (EPIPE); the parent-death signal will stop us after the task.
            pass


def _shorten(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (v[:200] if isinstance(v, str) else v) for k, v in fields.items()}


@dataclass
class Reader:
    """The supervisor's end: turns bytes read from a child's pipe into messages."""

    fd: int
    buffer: bytes = field(default=b"")

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a line we did not write; children never send partial lines
            if isinstance(message, dict) and "event" in message:
                messages.append(message)
        return messages
