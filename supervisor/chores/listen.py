"""Instant pickup on PostgreSQL: LISTEN for the trigger's NOTIFY and wake one idle child.

The ``task_supervisor`` app's migration installs a trigger (PostgreSQL only) that sends
``NOTIFY task_supervisor_ready`` with the row's queue and run_after when a row becomes READY; the
notice arrives when the enqueueing transaction commits. The listener runs on its own connection
inside the supervisor's loop, never blocking: the selector says when its socket is readable.
Polling by the children stays the fallback (a lost connection, SQLite, no trigger).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from task_supervisor import events
from task_supervisor.chores.backoff import Backoff
from task_supervisor.chores.timebox import timebox
from task_supervisor.compat import TaskBackend
from task_supervisor.exceptions import one_line

log = logging.getLogger(__name__)

CHANNEL = "task_supervisor_ready"
RECONNECT_MIN = 1.0  # seconds
RECONNECT_MAX = 30.0
CONNECT_DEADLINE = 2.0  # seconds opening the connection may block the loop
FAR_FUTURE = 10 * 365 * 86400.0  # run_after beyond this is the backend's "no run_after" marker


@dataclass(frozen=True, slots=True)
class Ready:
    queue: str
    at: float | None  # wall-clock epoch seconds when it may run; None: now


def parse_payload(payload: str, now_wall: float) -> Ready | None:
    try:
        data = json.loads(payload)
        queue = str(data["q"])
    except (ValueError, KeyError, TypeError):
        return None
    at = data.get("at")
    if not isinstance(at, int | float) or at <= now_wall or at - now_wall > FAR_FUTURE:
        return Ready(queue, None)
    return Ready(queue, float(at))


class ReadyListener:
    """One LISTEN connection; ``poll()`` returns queues that have a task ready now."""

    def __init__(self, backend: TaskBackend, wall: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.wall = wall
        self.conn: Any = None
        self.driver = ""
        self.retry_at = 0.0
        self.backoff = Backoff(RECONNECT_MIN, RECONNECT_MAX)
        self.later: list[tuple[float, str]] = []  # heap of (epoch, queue) for run_after rows

    def fileno(self) -> int | None:
        if self.conn is None:
            return None
        return self.conn.fileno()

    def connect(self, now: float) -> bool:
        """Open the LISTEN connection; False (and a later retry) when the database refuses."""
        from django.db import connections

        if self.conn is not None or now < self.retry_at:
            return self.conn is not None
        wrapper = connections[self.backend.db_alias]
        conn = None
        try:
            with timebox(CONNECT_DEADLINE, "opening the LISTEN connection"):
                conn = wrapper.get_new_connection(wrapper.get_connection_params())
                self.driver = type(conn).__module__.split(".")[0]
                if self.driver == "psycopg2":
                    conn.set_isolation_level(0)
                    conn.cursor().execute(f"LISTEN {CHANNEL}")
                else:
                    conn.autocommit = True
                    conn.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            log.warning(
                "Cannot LISTEN for new tasks (polling meanwhile): %s",
                one_line(exc),
                extra={"event": events.LISTEN_CONNECT_FAILED},
            )
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self.retry_at = now + self.backoff.failed()
            return False
        self.conn = conn
        self.backoff.succeeded()
        log.info("Listening for new tasks on %s", CHANNEL, extra={"event": events.LISTENING})
        return True

    def read(self) -> list[str]:
        """Queues whose tasks may run now, from notices received (call when readable)."""
        payloads: list[str] = []
        try:
            if self.driver == "psycopg2":
                self.conn.poll()
                while self.conn.notifies:
                    payloads.append(self.conn.notifies.pop(0).payload)
            else:
                pgconn = self.conn.pgconn
                pgconn.consume_input()
                while (notice := pgconn.notifies()) is not None:
                    payloads.append(notice.extra.decode())
                if pgconn.status != 0:  # CONNECTION_OK
                    raise ConnectionError("the LISTEN connection closed")
        except Exception as exc:
            log.warning(
                "LISTEN connection lost (polling meanwhile): %s",
                one_line(exc),
                extra={"event": events.LISTEN_LOST},
            )
            self.close()
        now_wall = self.wall()
        queues = []
        for payload in payloads:
            ready = parse_payload(payload, now_wall)
            if ready is None:
                continue
            if ready.at is None:
                queues.append(ready.queue)
            else:
                heapq.heappush(self.later, (ready.at, ready.queue))
        return queues

    def due(self) -> list[str]:
        """Queues whose run_after has come."""
        now_wall = self.wall()
        queues = []
        while self.later and self.later[0][0] <= now_wall:
            queues.append(heapq.heappop(self.later)[1])
        return queues

    def next_due_in(self) -> float | None:
        """Seconds until the next run_after comes, if any."""
        if not self.later:
            return None
        return max(0.0, self.later[0][0] - self.wall())

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None
        self.retry_at = 0.0
