"""Helpers for tests that run real supervisors against real databases."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "project"
PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
# MariaDB: the tests' own user, made by the factory through the server's root account (its unix
# socket as root, as on CI, else root on 127.0.0.1), with rights on databases named ts_*.
MY_HOST = "127.0.0.1"
MY_PORT = 3306
MY_USER = "ts_test"
MY_PASSWORD = "ts_test"
MY_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
MARIADB_ENGINES = ("mariadb", "mariadb-rr")  # READ COMMITTED (Django's default), REPEATABLE READ
# "pgbouncer": a PostgreSQL database whose "default" alias goes through PgBouncer in transaction
# pooling (started by the tests on a loopback port, ``pgbouncer_port``) and whose "direct" alias,
# for the supervisor's LISTEN (listen_database), does not.
PGBOUNCER = "pgbouncer"
POSTGRES_ENGINES = ("postgres", PGBOUNCER)
LISTEN_DIRECT = 'listen_database = "direct"'
JSON_LOGS = 'log_format = "json"'
# Keys of a JSON log record that make up its line in a readable tail; the others show as its context.
_LINE_KEYS = ("time", "level", "logger", "message", "exc_info", "process")
_MISSING = object()

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, message: str | Callable[[], str] = ""
) -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``message`` at the deadline.

    ``message`` may be a callable, evaluated only at the deadline (a log tail read then, not before).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {text or predicate}")
        time.sleep(interval)


def pg_connect(dbname: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True)


def my_connect(dbname: str | None = None) -> Any:
    """A MariaDB session of the tests' own user, in autocommit."""
    import MySQLdb

    conn = MySQLdb.connect(
        host=MY_HOST, port=MY_PORT, user=MY_USER, password=MY_PASSWORD, database=dbname or "", connect_timeout=10
    )
    conn.autocommit(True)
    return conn


def my_admin() -> Any:
    """A MariaDB session of root, which may create the tests' user."""
    import MySQLdb

    tried = []
    for kwargs in [*({"unix_socket": path} for path in MY_SOCKETS if os.path.exists(path)), {"host": MY_HOST}]:
        try:
            conn = MySQLdb.connect(user="root", port=MY_PORT, connect_timeout=10, **kwargs)
        except MySQLdb.Error as exc:
            tried.append(f"{kwargs}: {exc}")
            continue
        conn.autocommit(True)
        return conn
    raise RuntimeError(
        f"MariaDB must answer on {MY_HOST}:{MY_PORT} with a root account the tests can use (the suite runs "
        "on SQLite, PostgreSQL AND MariaDB): " + "; ".join(tried)
    )


def my_execute(conn: Any, *statements: str) -> list[tuple[Any, ...]]:
    """Run ``statements`` on a MySQLdb connection; the rows of the last one."""
    with conn.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
        return list(cursor.fetchall())


def manage(env: dict[str, str], *args: str, project: Path = PROJECT) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


@dataclass
class Database:
    """One throw-away database with every migration applied."""

    engine: str  # "sqlite", "postgres", or "mariadb" / "mariadb-rr" (see MARIADB_ENGINES)
    name: str

    @property
    def env(self) -> dict[str, str]:
        if self.engine == PGBOUNCER:
            return {"TS_DB_ENGINE": self.engine, "TS_DB_NAME": self.name, "TS_PGBOUNCER_PORT": str(pgbouncer_port())}
        return {"TS_DB_ENGINE": self.engine, "TS_DB_NAME": self.name}

    def settings_dict(self) -> dict[str, Any]:
        if self.engine in MARIADB_ENGINES:
            isolation = "repeatable read" if self.engine == "mariadb-rr" else "read committed"
            return {
                "ENGINE": "django.db.backends.mysql",
                "NAME": self.name,
                "HOST": MY_HOST,
                "PORT": str(MY_PORT),
                "USER": MY_USER,
                "PASSWORD": MY_PASSWORD,
                "OPTIONS": {"isolation_level": isolation},
            }
        if self.engine in POSTGRES_ENGINES:
            through = self.engine == PGBOUNCER
            return {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": self.name,
                "HOST": PG_HOST,
                "PORT": str(pgbouncer_port() if through else PG_PORT),
                "USER": PG_USER,
                "DISABLE_SERVER_SIDE_CURSORS": through,
            }
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": self.name, "OPTIONS": {"timeout": 20}}


class DatabaseFactory:
    """Migrates a template once per test session, then copies it for each test (fast)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.templates: dict[str, str] = {}
        self.created: list[Database] = []

    def template(self, engine: str) -> str:
        if engine in MARIADB_ENGINES:
            engine = "mariadb"  # one schema for both isolation levels
        if engine == PGBOUNCER:
            engine = "postgres"  # the same database, reached another way
        if engine not in self.templates:
            if engine == "mariadb":
                name = f"ts_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
                ensure_mariadb_user()
                with contextlib.closing(my_connect()) as conn:
                    my_execute(conn, f"CREATE DATABASE `{name}`")
            elif engine == "sqlite":
                name = str(self.workdir / "template.sqlite3")
            else:
                name = f"ts_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
                with pg_connect() as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
            manage({"TS_DB_ENGINE": engine, "TS_DB_NAME": name}, "migrate", "-v0")
            self.templates[engine] = name
        return self.templates[engine]

    def create(self, engine: str) -> Database:
        template = self.template(engine)
        if engine == "sqlite":
            name = str(self.workdir / f"db-{uuid.uuid4().hex[:8]}.sqlite3")
            shutil.copyfile(template, name)
        elif engine in MARIADB_ENGINES:
            name = f"ts_test_{uuid.uuid4().hex[:10]}"
            _mariadb_copy(template, name)
        else:
            name = f"ts_test_{uuid.uuid4().hex[:10]}"
            with pg_connect() as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        db = Database(engine, name)
        self.created.append(db)
        return db

    def drop(self, db: Database) -> None:
        if db.engine in POSTGRES_ENGINES:
            with pg_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        elif db.engine in MARIADB_ENGINES:
            _mariadb_drop(db.name)

    def cleanup(self) -> None:
        if "postgres" in self.templates:
            with pg_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.templates["postgres"]}" WITH (FORCE)')
        if "mariadb" in self.templates:
            _mariadb_drop(self.templates["mariadb"])


def ensure_mariadb_user() -> None:
    """The tests' user, with every right on databases named ts_*; made through root if missing."""
    import MySQLdb

    try:
        my_connect().close()
        return
    except MySQLdb.Error:
        pass
    with contextlib.closing(my_admin()) as admin:
        my_execute(
            admin,
            f"CREATE USER IF NOT EXISTS '{MY_USER}'@'{MY_HOST}' IDENTIFIED BY '{MY_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON `ts\\_%`.* TO '{MY_USER}'@'{MY_HOST}'",
        )


def _mariadb_copy(template: str, name: str) -> None:
    """A new database with the template's tables and rows (MariaDB has no CREATE DATABASE ... TEMPLATE)."""
    with contextlib.closing(my_connect()) as conn:
        tables = [
            row[0] for row in my_execute(conn, f"SHOW FULL TABLES FROM `{template}` WHERE Table_type = 'BASE TABLE'")
        ]
        my_execute(conn, f"CREATE DATABASE `{name}`", f"USE `{name}`", "SET SESSION foreign_key_checks = 0")
        for table in tables:
            ((_, ddl),) = my_execute(conn, f"SHOW CREATE TABLE `{template}`.`{table}`")
            my_execute(conn, ddl)  # foreign keys name their tables unqualified: this database's
        for table in tables:
            my_execute(conn, f"INSERT INTO `{name}`.`{table}` SELECT * FROM `{template}`.`{table}`")


def _mariadb_drop(name: str) -> None:
    with contextlib.closing(my_connect()) as conn:
        my_execute(conn, f"DROP DATABASE IF EXISTS `{name}`")


def use_database(db: Database) -> None:
    """Point this process's Django "default" database at ``db``."""
    from django.db import connections

    connections.close_all()
    connections.settings["default"] = connections.configure_settings({"default": db.settings_dict()})["default"]
    try:
        del connections["default"]
    except AttributeError:
        pass  # no connection was opened in this thread yet


_pgbouncer: dict[str, Any] = {}


def pgbouncer_port() -> int:
    """The loopback port of this test process's PgBouncer, started on first use (Debian package
    ``pgbouncer``; tests/system-packages.sh installs it) in transaction pooling mode in front of
    the PostgreSQL on 127.0.0.1:5432, and stopped when the process exits."""
    if "port" in _pgbouncer:
        return _pgbouncer["port"]
    import atexit
    import socket
    import tempfile

    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        raise RuntimeError("PgBouncer is not installed: run tests/system-packages.sh as root (package pgbouncer).")
    folder = Path(tempfile.mkdtemp(prefix="ts-pgbouncer-"))
    folder.chmod(0o755)  # read by the postgres user it runs as when started by root
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (folder / "users.txt").write_text(f'"{PG_USER}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        textwrap.dedent(
            f"""\
            [databases]
            * = host={PG_HOST} port={PG_PORT}
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = {port}
            unix_socket_dir =
            auth_type = trust
            auth_file = {folder / "users.txt"}
            pool_mode = transaction
            max_client_conn = 2000
            default_pool_size = 20
            ignore_startup_parameters = extra_float_digits,options
            {"user = postgres" if os.geteuid() == 0 else ""}
            """
        )
    )
    for name in ("users.txt", "pgbouncer.ini"):
        (folder / name).chmod(0o644)
    log = open(folder / "pgbouncer.log", "wb")
    proc = subprocess.Popen([binary, str(folder / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT)
    atexit.register(lambda: (proc.terminate(), proc.wait(10)))

    def accepts() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"PgBouncer exited: {(folder / 'pgbouncer.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    wait_until(accepts, 10, message="PgBouncer to accept connections")
    _pgbouncer["port"] = port
    return port


class JsonLog:
    """A growing log file read as JSON records, one per line; other lines (tracebacks, a task's
    prints) are skipped. Read incrementally: each call parses only what was appended since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except FileNotFoundError:
            return self.records
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self.offset += len(complete)
        self.records.extend(record for line in complete.splitlines() if (record := parse_record(line)))
        return self.records


def parse_record(line: bytes | str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None when it holds something else."""
    if not line.lstrip().startswith(b"{" if isinstance(line, bytes) else "{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def matching(records: list[dict[str, Any]], name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
    """Records of event ``name`` (any event when None) whose ``fields`` have the values given."""
    return [
        r
        for r in records
        if (name is None or r.get("event") == name) and all(r.get(k, _MISSING) == v for k, v in fields.items())
    ]


def describe_event(name: str | None, fields: dict[str, Any]) -> str:
    return " ".join([f"event {name or '(any)'}", *(f"{k}={v!r}" for k, v in fields.items())])


def render(line: str) -> str:
    """A log line as a person reads it: a JSON record as time, level, message and its context."""
    record = parse_record(line)
    if record is None:
        return line
    context = " ".join(f"{k}={v}" for k, v in record.items() if k not in _LINE_KEYS)
    text = f"{str(record.get('time', ''))[11:23]} {record.get('level', '')} {record.get('message', '')}"
    text += f"  [{context}]" if context else ""
    return text + (f"\n{record['exc_info']}" if record.get("exc_info") else "")


def with_json_logs(text: str) -> str:
    """``text`` with ``log_format = "json"`` in its [supervisor] table, unless it sets a format."""
    if re.search(r"^\s*log_format\s*=", text, re.MULTILINE):
        return text
    table = re.compile(r"^\[supervisor\][ \t]*$", re.MULTILINE)
    if table.search(text):
        return table.sub(f"[supervisor]\n{JSON_LOGS}", text, count=1)
    return f"{text}\n[supervisor]\n{JSON_LOGS}\n"


@dataclass
class SupervisorProcess:
    """A real ``task-supervisor run`` in its own session, with its log in a file.

    Its config gets ``log_format = "json"`` unless it names a format: tests wait for and assert on
    the events of task_supervisor.events (``wait_event``, ``has_event``), never on a message's
    wording, so rewording a log line breaks no test.
    """

    workdir: Path
    db: Database
    config_text: str
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    prefix: tuple[str, ...] = ()  # a command to run the supervisor under, e.g. unshare

    def command(self) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "task_supervisor", "run", "-c", str(self.config_path)]

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "supervisor.log"

    @property
    def env(self) -> dict[str, str]:
        # Its own folder for the default control socket: supervisors of suites that run side by
        # side on one machine (node "testnode" in each) must not find each other's socket.
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.workdir), **self.db.env, **self.extra_env}

    def write_config(self, text: str) -> None:
        self.config_text = with_json_logs(text)
        if self.db.engine == PGBOUNCER and "listen_database" not in self.config_text:
            self.config_text = self.config_text.replace("[supervisor]", f"[supervisor]\n{LISTEN_DIRECT}", 1)
        self.config_path.write_text(self.config_text)

    def start(self) -> SupervisorProcess:
        self.write_config(self.config_text)
        self._log = open(self.log_path, "wb")
        self._json = JsonLog(self.log_path)
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env={**self.env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """The raw log, as a log pipeline would collect it."""
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Its JSON log records in order; with ``name`` (and ``fields``), only those that match."""
        return matching(self._json.read(), name, **fields)

    def has_event(self, name: str, **fields: Any) -> bool:
        return bool(self.events(name, **fields))

    def wait_event(self, name: str, timeout: float = 20.0, count: int = 1, **fields: Any) -> dict[str, Any]:
        """The ``count``-th record of event ``name`` with ``fields``, once it is logged."""
        found = wait_until(
            lambda: len(seen := self.events(name, **fields)) >= count and seen,
            timeout,
            message=lambda: (
                f"{describe_event(name, fields)} x{count} (logged {len(self.events(name, **fields))}); "
                f"the log ends:\n{self.tail()}"
            ),
        )
        return found[count - 1]

    def wait_log(self, text: str, timeout: float = 20.0, count: int = 1) -> None:
        """Prose: for tests not on events yet; prefer ``wait_event``."""
        wait_until(
            lambda: self.log().count(text) >= count,
            timeout,
            message=lambda: f"{text!r} x{count} in log:\n{self.tail()}",
        )

    def tail(self, lines: int = 40) -> str:
        """The end of the log, readable: JSON records as time, level, message and context."""
        return "\n".join(render(line) for line in self.log().splitlines()[-lines:])

    def status(self) -> dict[str, Any]:
        """What ``task-supervisor status --json`` says, the way an operator asks."""
        out = subprocess.run(
            [sys.executable, "-m", "task_supervisor", "status", "--json", "-c", str(self.config_path)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def wait_ready(self, pool: str, slot: int, timeout: float = 20.0) -> dict[str, Any]:
        """The child in ``slot`` of ``pool`` once it reported ready (idle or busy), as status shows it."""

        def ready() -> dict[str, Any] | None:
            for found in self.status().get("pools", []):
                for child in found["children"] if found["name"] == pool else []:
                    if child["slot"] == slot and child["state"] in ("idle", "busy"):
                        return child
            return None

        return wait_until(ready, timeout, 0.2, message=lambda: f"{pool}[{slot}] ready; the log ends:\n{self.tail()}")

    def children(self) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def wait_children(self, count: int, timeout: float = 20.0) -> list[psutil.Process]:
        return wait_until(
            lambda: (kids := self.children()) and len(kids) == count and kids,
            timeout,
            message=lambda: f"{count} children; the log ends:\n{self.tail()}",
        )

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout}s; the log ends:\n{self.tail()}") from None

    def stop(self) -> None:
        """Kill whatever is left: the supervisor, its children (own process groups) and all."""
        if self.proc is None:
            return
        try:
            family = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        for proc in family:
            _kill(proc.pid)
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        psutil.wait_procs(family, timeout=10)
        self._log.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def config_toml(pools: str, *, graceful: str = "10s", extra: str = "", node: str = "testnode") -> str:
    return textwrap.dedent(
        f"""\
        [django]
        settings = "tsproject.settings"
        pythonpath = ["{PROJECT}"]

        [supervisor]
        node = "{node}"
        graceful_timeout = "{graceful}"
        http = ""
        {extra}
        """
    ) + textwrap.dedent(pools)
