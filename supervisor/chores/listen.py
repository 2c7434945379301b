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
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
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
PROBE_EVERY = 30.0  # seconds between probes of the notices' path
PROBE_GRACE = 2.0  # seconds a probe may take to come back before pickup counts as broken
TRIGGER = "task_supervisor_notify_ready"


@dataclass(frozen=True, slots=True)
class Notice:
    queue: str
    task_id: str | None  # None: for every node (a queue resumed, a limited slot freed)
    hop: int = 0  # how many nodes passed it on (loop/fleet.py)
    at: float | None = None  # wall-clock epoch seconds when it may run; None: now

    def passed(self) -> Notice:
        return replace(self, hop=self.hop + 1, at=None)

    def payload(self) -> str:
        return json.dumps({"q": self.queue, "id": self.task_id, "hop": self.hop})


def parse_payload(payload: str, now_wall: float) -> Notice | str | None:
    """A notice, a probe's token (str), or None for a payload that is neither."""
    try:
        data = json.loads(payload)
        if "probe" in data:
            return str(data["probe"])
        queue = str(data["q"])
    except (ValueError, KeyError, TypeError):
        return None
    task_id = data.get("id")
    hop = data.get("hop")
    notice = Notice(queue, None if task_id is None else str(task_id), hop if isinstance(hop, int) else 0)
    at = data.get("at")
    if not isinstance(at, int | float) or at <= now_wall or at - now_wall > FAR_FUTURE:
        return notice
    return replace(notice, at=float(at))


class ReadyListener:
    """One LISTEN connection; ``read()`` returns the notices of tasks ready now.

    Whether notices really arrive is checked end to end, not assumed: every PROBE_EVERY the
    listener sends a probe notice of its own through the tasks' database alias (the connection
    the children use, through PgBouncer if they do) and ``confirmed()`` holds only while the
    latest probe came back. A LISTEN made through a pooler in transaction mode, a missing
    trigger or a silently broken connection therefore never leaves children polling slowly.
    """

    def __init__(self, backend: TaskBackend, listen_alias: str = "", wall: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.listen_alias = listen_alias or backend.db_alias
        self.wall = wall
        self.conn: Any = None
        self.driver = ""
        self.retry_at = 0.0
        self.backoff = Backoff(RECONNECT_MIN, RECONNECT_MAX)
        self.later: list[tuple[float, int, Notice]] = []  # heap of (epoch, n, notice) for run_after rows
        self.pushed = 0
        self.trigger = False  # the READY trigger is installed (checked at each connect)
        self.token = secrets.token_hex(6)
        self.sent = 0  # probes sent, and when the last was
        self.sent_at = float("-inf")
        self.heard = 0  # the last probe heard back
        self.next_probe = 0.0
        self.deaf_told = False  # the warning that probes do not come back, once per connection

    def fileno(self) -> int | None:
        if self.conn is None:
            return None
        return self.conn.fileno()

    def connect(self, now: float) -> bool:
        """Open the LISTEN connection; False (and a later retry) when the database refuses."""
        from django.db import connections

        if self.conn is not None or now < self.retry_at:
            return self.conn is not None
        wrapper = connections[self.listen_alias]
        conn = None
        try:
            with timebox(CONNECT_DEADLINE, "opening the LISTEN connection"):
                conn = wrapper.get_new_connection(wrapper.get_connection_params())
                self.driver = type(conn).__module__.split(".")[0]
                if self.driver == "psycopg2":
                    conn.set_isolation_level(0)
                else:
                    conn.autocommit = True
                self._execute(conn, f"LISTEN {CHANNEL}")
                found = self._execute(conn, "SELECT 1 FROM pg_trigger WHERE tgname = %s", [TRIGGER])
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
        self.trigger = bool(found)
        self.next_probe = now
        self.backoff.succeeded()
        if not self.trigger:
            log.warning(
                "Listening on %s, but the trigger that announces new tasks is missing: run "
                "'manage.py migrate task_supervisor'; children poll at their interval meanwhile",
                CHANNEL,
                extra={"event": events.LISTEN_NO_TRIGGER},
            )
        else:
            log.info("Listening for new tasks on %s", CHANNEL, extra={"event": events.LISTENING})
        return True

    def _execute(self, conn: Any, sql: str, params: list[Any] | None = None) -> list[Any]:
        """Run one statement on the LISTEN connection (autocommit); its rows, if any."""
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()

    # -- probes ----------------------------------------------------------------------------

    def probe(self, now: float) -> bool:
        """Send a probe through the tasks' alias when one is due; True if it tried (a database
        call that may block up to its time box)."""
        if self.conn is None or not self.trigger or now < self.next_probe:
            return False
        from django.db import connections

        self.next_probe = now + PROBE_EVERY
        payload = json.dumps({"probe": f"{self.token}:{self.sent + 1}"})
        try:
            with timebox(CONNECT_DEADLINE, "a probe of the LISTEN connection", [self.backend.db_alias]):
                with connections[self.backend.db_alias].cursor() as cursor:
                    cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
        except Exception as exc:  # the database is in trouble: the chores say so; try again later
            log.debug("Could not send a probe: %s", one_line(exc))
            # Counted as sent and lost: nothing proves notices arrive (the LISTEN connection may
            # have died silently too), so children poll at their interval until a probe returns.
            self.sent += 1
            self.sent_at = now - PROBE_GRACE
            return True
        self.sent += 1
        self.sent_at = now
        return True

    def confirmed(self, now: float) -> bool:
        """Do notices of new tasks reach this listener now? (The latest probe came back, or it
        was sent less than PROBE_GRACE ago and the one before came back.)"""
        if self.conn is None or not self.trigger or self.heard < 1:
            return False
        return self.heard >= self.sent or (self.heard == self.sent - 1 and now - self.sent_at < PROBE_GRACE)

    def warn_if_deaf(self, now: float) -> None:
        """Once per connection: the first probe did not come back (LISTEN through a pooler?)."""
        if self.deaf_told or self.conn is None or self.heard or not self.sent or now - self.sent_at < PROBE_GRACE:
            return
        self.deaf_told = True
        log.warning(
            "The LISTEN connection hears no notices (through PgBouncer in transaction pooling? then name a direct "
            "connection's alias in [supervisor] listen_database); children poll at their interval",
            extra={"event": events.LISTEN_DEAF},
        )

    def next_probe_due(self) -> float | None:
        if self.conn is None or not self.trigger:
            return None
        due = self.next_probe
        if self.heard < self.sent:
            due = min(due, self.sent_at + PROBE_GRACE)
        return due

    def _heard(self, token: str) -> None:
        mine, _, seq = token.rpartition(":")
        if mine == self.token and seq.isdigit():
            self.heard = max(self.heard, int(seq))

    def send(self, notice: Notice) -> bool:
        """Pass a notice on to the other nodes (on this connection: it is a direct one)."""
        if self.conn is None:
            return False
        try:
            self._execute(self.conn, "SELECT pg_notify(%s, %s)", [CHANNEL, notice.payload()])
        except Exception as exc:
            log.warning(
                "LISTEN connection lost (polling meanwhile): %s", one_line(exc), extra={"event": events.LISTEN_LOST}
            )
            self.close()
            return False
        return True

    def read(self) -> list[Notice]:
        """Notices of tasks that may run now (call when readable); probes are taken in."""
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
        notices = []
        for payload in payloads:
            parsed = parse_payload(payload, now_wall)
            if isinstance(parsed, str):
                self._heard(parsed)
            elif parsed is not None and parsed.at is None:
                notices.append(parsed)
            elif parsed is not None and parsed.at is not None:
                self.pushed += 1
                heapq.heappush(self.later, (parsed.at, self.pushed, replace(parsed, at=None)))
        return notices

    def due(self) -> list[Notice]:
        """Notices of tasks whose run_after has come."""
        now_wall = self.wall()
        notices = []
        while self.later and self.later[0][0] <= now_wall:
            notices.append(heapq.heappop(self.later)[2])
        return notices

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
        self.trigger = False
        self.heard = self.sent = 0
        self.deaf_told = False
