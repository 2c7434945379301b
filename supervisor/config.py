"""config.toml, loaded once into frozen dataclasses.

Every problem is collected with its key path, the bad value and the fix, so that
``task-supervisor check`` can list them all at once and ``run`` can refuse with one line each.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from task_supervisor.wire.control import LEASE_MARGIN
from task_supervisor.wire.limits import FlowLimit, parse_rate

WORKER_ID_MAX_LENGTH = 64  # db_worker refuses longer worker ids
# Worker ids are node:pool:slot:generation; leave room for slot and generation digits (the
# generation counts from the wall clock in tenths of a second: 11 digits until 2286).
_WORKER_ID_SUFFIX_RESERVE = len(":999:") + 11

START_METHODS = ("fork", "exec")
MAX_PROCESSES = 999  # children per pool: worker ids reserve 3 digits for the slot
RESERVED_POOL_NAME = "scheduler"  # the scheduler child's worker id reads node:scheduler:0:N
ON_WORKER_LOST = ("fail", "requeue")
LOG_FORMATS = ("text", "json")

MAX_DURATION = 100 * 365 * 86400.0  # seconds; past this, date arithmetic overflows
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?", re.IGNORECASE)
_POOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class ConfigError(Exception):
    """config.toml cannot be used; ``problems`` holds one sentence per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "250ms", "30s", "5m", "1h", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError('a duration must be a number of seconds or a string such as "30s"')
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("a duration that large is out of range") from None
    elif isinstance(value, str):
        text = value.strip().lower()
        parts = list(_DURATION_PART.finditer(text))
        joined = "".join(p.group(0) for p in parts).replace(" ", "")
        if not parts or joined != text.replace(" ", ""):
            raise ValueError('use seconds or a string such as "250ms", "30s", "5m", "1h"')
        seconds = sum(float(p.group(1)) * _DURATION_UNITS[p.group(2)] for p in parts)
    else:
        raise ValueError('a duration must be a number of seconds or a string such as "30s"')
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be finite and not negative")
    if seconds > MAX_DURATION:
        raise ValueError("a duration must be at most 100 years")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as "512MiB", "1GiB", "300MB"."""
    if isinstance(value, bool):
        raise ValueError('a size must be a number of bytes or a string such as "512MiB"')
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if not match:
            raise ValueError('use bytes or a string such as "512MiB"')
        scaled = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
        if not math.isfinite(scaled):
            raise ValueError("a size that large is out of range")
        size = int(scaled)
    else:
        raise ValueError('a size must be a number of bytes or a string such as "512MiB"')
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


@dataclass(frozen=True, slots=True)
class DjangoConfig:
    settings: str
    pythonpath: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    node: str
    graceful_timeout: float = 30.0  # seconds
    http: str = "127.0.0.1:8787"
    node_timeout: float = 60.0  # seconds
    control_socket: str = ""  # "" -> control.default_socket_path(node)
    log_format: str = "text"
    hung_after: float = 30.0  # seconds an idle child may leave a ping unanswered
    # Seconds between an idle child's polls while notices of new tasks are known to arrive
    # (PostgreSQL, LISTEN up, its probe heard); 0: always the pool's interval.
    safety_poll: float = 60.0
    # The Django database alias the LISTEN connection opens (a direct one, when the tasks'
    # alias goes through PgBouncer in transaction pooling); "": the tasks' own alias.
    listen_database: str = ""

    @property
    def beat_interval(self) -> float:
        """Seconds between heartbeats, each renewing the node's lease for node_timeout."""
        return min(15.0, max(1.0, self.node_timeout / 4))


# The shortest node_timeout whose lease survives a missed heartbeat: running tasks are stopped
# LEASE_MARGIN before the lease ends, and two beats (node_timeout / 4 apart) must fit before that:
# node_timeout >= LEASE_MARGIN + node_timeout / 2.
MIN_NODE_TIMEOUT = 2 * LEASE_MARGIN  # seconds


BACKOFFS = ("exponential", "fixed")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """[retries."dotted.path"] or [pools.NAME.retries]: another try for a failed task."""

    max_attempts: int = 3  # attempts in all, the first included
    backoff: str = "exponential"
    delay: float = 10.0  # seconds before the first retry; doubles with exponential
    max_delay: float = 3600.0  # seconds
    jitter: bool = True
    on: tuple[str, ...] = ()  # exception class paths; empty: any exception


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    queues: tuple[str, ...]
    processes: int = 1  # children at start; with autoscaling, the minimum
    max_processes: int = 1  # equal to processes unless processes = { min = .., max = .. }
    backend: str = "default"
    interval: float = 1.0  # seconds between polls of an idle db_worker
    start: str = "fork"
    max_tasks: int | None = None
    timeout: float | None = None  # seconds
    kill_after: float = 10.0  # seconds
    max_memory: int | None = None  # bytes
    on_worker_lost: str = "fail"
    max_attempts: int = 3
    persistent_connections: bool = True  # children keep their database connection across tasks
    retries: RetryPolicy | None = None  # the pool-wide default retry policy
    scale_cooldown: float = 30.0  # seconds an autoscaled pool waits after a change before shrinking

    @property
    def autoscaled(self) -> bool:
        return self.max_processes > self.processes


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """[retention]: how long finished rows are kept; None keeps them for ever."""

    successful: float | None = None  # seconds after finished_at
    failed: float | None = None  # seconds after finished_at
    schedule_runs: float | None = None  # seconds after enqueued_at, for the scheduler's run log
    figures: float = 7 * 86400.0  # seconds the dashboard's per-minute figures and stopped nodes are kept

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.successful, self.failed, self.schedule_runs))


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    django: DjangoConfig
    supervisor: SupervisorConfig
    pools: dict[str, PoolConfig] = field(default_factory=dict)
    task_timeouts: dict[str, float] = field(default_factory=dict)
    scheduler: SchedulerConfig = SchedulerConfig()
    retries: dict[str, RetryPolicy] = field(default_factory=dict)
    retention: RetentionConfig = RetentionConfig()
    limits: dict[str, FlowLimit] = field(default_factory=dict)  # [limits."dotted.path"]

    def retry_policy(self, pool: str, task_path: str) -> RetryPolicy | None:
        """The task's own policy, else its pool's default, else none."""
        if task_path in self.retries:
            return self.retries[task_path]
        pool_config = self.pools.get(pool)
        return pool_config.retries if pool_config else None

    def pythonpath_dirs(self) -> list[str]:
        """The pythonpath entries as absolute paths, relative ones taken from the config's folder."""
        base = self.path.parent
        return [str((base / entry).resolve()) for entry in self.django.pythonpath]


class _Reader:
    """Reads one TOML table, recording problems instead of raising."""

    def __init__(self, table: dict[str, Any], path: str, problems: list[str]) -> None:
        self.table = table
        self.path = path
        self.problems = problems
        self.known: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, message: str) -> None:
        self.problems.append(f"{self.key(name)} {message}.")

    def get(self, name: str, default: Any, convert: Callable[[Any], Any], expect: str) -> Any:
        self.known.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        try:
            return convert(value)
        except (TypeError, ValueError) as exc:
            # Converters raise an empty message when `expect` already says it all.
            detail = f"; {exc}" if str(exc) else ""
            self.fail(name, f"must be {expect}, got {value!r}{detail}")
            return default

    def finish(self) -> None:
        for name in self.table:
            if name not in self.known:
                self.problems.append(_unknown_key(self.key(name), name, self.known, self.path))


def _unknown_key(full: str, name: str, known: set[str], parent: str) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    if close:
        return f"Unknown key {full}; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"Unknown key {full}; known keys are {', '.join(sorted(known))}."


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("")
    return value


def _as_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError("")
    return tuple(value)


def _queue_names(value: Any) -> tuple[str, ...]:
    queues = _as_str_list(value)
    if not queues:
        raise TypeError("")
    return queues


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("")
    if value < 1:
        raise ValueError("")
    return value


def _processes(value: Any) -> tuple[int, int]:
    """``4`` or ``{ min = 1, max = 8 }`` (autoscaling between the two)."""
    if isinstance(value, dict):
        if set(value) != {"min", "max"}:
            raise ValueError("a table needs exactly the keys min and max")
        low, high = _positive_int(value["min"]), _positive_int(value["max"])
        if low > high:
            raise ValueError(f"min {low} is above max {high}")
    else:
        low = high = _positive_int(value)
    if high > MAX_PROCESSES:
        raise ValueError(f"at most {MAX_PROCESSES} children per pool (slot numbers have 3 digits in worker ids)")
    return low, high


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError("")
        return str(value)

    return convert


def _listen_address(value: Any) -> str:
    text = _as_str(value)
    if text == "":
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('use "HOST:PORT", or "" to turn the listener off')
    return text


def default_node_name(hostname: str | None = None) -> str:
    """The hostname, shortened if needed so worker ids stay within db_worker's limit."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", hostname or socket.gethostname()) or "node"
    limit = WORKER_ID_MAX_LENGTH - _WORKER_ID_SUFFIX_RESERVE - 16
    if len(name) <= limit:
        return name
    # Keep both ends and a digest of the whole: pod names differ in their last characters
    # (deployment-5d8f7c9b4-x2k8q), so cutting the end would give replicas one node name.
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    tail = 12
    return f"{name[: limit - tail - len(digest) - 2]}-{digest}-{name[-tail:]}"


def _node_name(value: Any) -> str:
    text = _as_str(value)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", text):
        raise ValueError("use letters, digits, '.', '_' and '-' only")
    return text


def _read_supervisor(table: dict[str, Any], problems: list[str]) -> SupervisorConfig:
    r = _Reader(table, "supervisor", problems)
    node = r.get("node", None, _node_name, "a node name") or default_node_name()
    graceful = r.get("graceful_timeout", 30.0, parse_duration, "a duration")
    http = r.get("http", "127.0.0.1:8787", _listen_address, 'a listen address "HOST:PORT"')
    node_timeout = r.get("node_timeout", 60.0, parse_duration, "a duration")
    control_socket = r.get("control_socket", "", _as_str, "a file path")
    log_format = r.get("log_format", "text", _choice(LOG_FORMATS), '"text" or "json"')
    hung_after = r.get("hung_after", 30.0, parse_duration, "a duration")
    safety_poll = r.get("safety_poll", 60.0, parse_duration, "a duration")
    listen_database = r.get("listen_database", "", _as_str, "a Django database alias")
    r.finish()
    config = SupervisorConfig(
        node=node,
        graceful_timeout=graceful,
        http=http,
        node_timeout=node_timeout,
        control_socket=control_socket,
        log_format=log_format,
        hung_after=hung_after,
        safety_poll=safety_poll,
        listen_database=listen_database,
    )
    if node_timeout is not None and node_timeout < MIN_NODE_TIMEOUT:
        r.fail(
            "node_timeout",
            f"must be at least {MIN_NODE_TIMEOUT:g}s, got {node_timeout:g}s: the node's lease ends node_timeout "
            f"after a heartbeat (one every node_timeout / 4), and running tasks are stopped {LEASE_MARGIN:g}s "
            f"before it ends, so two heartbeats must fit in node_timeout - {LEASE_MARGIN:g}s (see the README, "
            '"Never twice at once")',
        )
    if hung_after is not None and hung_after < 1:
        r.fail("hung_after", f"must be at least 1s, got {hung_after:g}s")
    return config


def _read_pool(name: str, table: Any, problems: list[str]) -> PoolConfig | None:
    path = f"pools.{name}"
    if not isinstance(table, dict):
        problems.append(f"{path} must be a table such as [pools.{name}], got {table!r}.")
        return None
    if not _POOL_NAME.match(name):
        problems.append(f"{path}: pool names use letters, digits, '.', '_' and '-', at most 32 characters.")
    elif name == RESERVED_POOL_NAME:
        problems.append(f"{path}: the name {name!r} is the scheduler child's; give the pool another name.")
    r = _Reader(table, path, problems)
    low, high = r.get("processes", (1, 1), _processes, "an integer of at least 1 or { min = 1, max = 8 }")
    pool = PoolConfig(
        name=name,
        queues=r.get("queues", (name,), _queue_names, "a list of one or more queue names"),
        processes=low,
        max_processes=high,
        backend=r.get("backend", "default", _as_str, "a task backend alias from settings.TASKS"),
        interval=r.get("interval", 1.0, parse_duration, "a duration"),
        start=r.get("start", "fork", _choice(START_METHODS), '"fork" or "exec"'),
        max_tasks=r.get("max_tasks", None, _positive_int, "an integer of at least 1"),
        timeout=r.get("timeout", None, parse_duration, "a duration"),
        kill_after=r.get("kill_after", 10.0, parse_duration, "a duration"),
        max_memory=r.get("max_memory", None, parse_size, 'a size such as "512MiB"'),
        on_worker_lost=r.get("on_worker_lost", "fail", _choice(ON_WORKER_LOST), '"fail" or "requeue"'),
        max_attempts=r.get("max_attempts", 3, _positive_int, "an integer of at least 1"),
        persistent_connections=r.get("persistent_connections", True, _as_bool, "true or false"),
        scale_cooldown=r.get("scale_cooldown", 30.0, parse_duration, "a duration"),
        retries=r.get("retries", None, lambda v: _read_retry(v, f"{path}.retries", problems), "a table"),
    )
    r.finish()
    return pool


def _read_retry(table: Any, path: str, problems: list[str]) -> RetryPolicy:
    if not isinstance(table, dict):
        raise TypeError("")
    r = _Reader(table, path, problems)
    policy = RetryPolicy(
        max_attempts=r.get("max_attempts", 3, _positive_int, "an integer of at least 1"),
        backoff=r.get("backoff", "exponential", _choice(BACKOFFS), '"exponential" or "fixed"'),
        delay=r.get("delay", 10.0, parse_duration, "a duration"),
        max_delay=r.get("max_delay", 3600.0, parse_duration, "a duration"),
        jitter=r.get("jitter", True, _as_bool, "true or false"),
        on=r.get("on", (), _as_str_list, "a list of exception class paths"),
    )
    r.finish()
    return policy


T = TypeVar("T")


def _per_task(
    table: dict[str, Any], section: str, problems: list[str], read: Callable[[str, dict[str, Any], str], T]
) -> dict[str, T]:
    """A section of tables keyed by task path ([retries."path"], [limits."path"]), each read by ``read``."""
    read_ = {}
    for task_path, value in table.items():
        path = f'{section}."{task_path}"'
        if not isinstance(value, dict):
            problems.append(f'{path} must be a table such as [{section}."{task_path}"], got {value!r}.')
            continue
        read_[task_path] = read(task_path, value, path)
    return read_


def _read_retries(table: dict[str, Any], problems: list[str]) -> dict[str, RetryPolicy]:
    return _per_task(table, "retries", problems, lambda task_path, value, path: _read_retry(value, path, problems))


def _read_task_timeouts(table: Any, problems: list[str]) -> dict[str, float]:
    timeouts: dict[str, float] = {}
    for task_path, value in table.items():
        try:
            timeouts[task_path] = parse_duration(value)
        except ValueError as exc:
            problems.append(f'task_timeouts."{task_path}" must be a duration, got {value!r} ({exc}).')
    return timeouts


def _tables(data: dict[str, Any], problems: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("django", "supervisor", "pools", "task_timeouts", "retries", "scheduler", "retention", "limits"):
        value = data.get(name, {})
        if not isinstance(value, dict):
            problems.append(f"{name} must be a table such as [{name}], got {value!r}.")
            value = {}
        yield name, value


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate config.toml; raise ConfigError listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such file; pass the path of your config.toml with -c."]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot be read ({exc})."]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: invalid TOML: {exc}."]) from None
    except ValueError as exc:  # an integer longer than Python converts (4300 digits)
        raise ConfigError([f"{file}: a value is out of range: {exc}."]) from None
    except RecursionError:
        raise ConfigError([f"{file}: arrays or tables are nested too deeply to read."]) from None
    return config_from_dict(data, file)


def config_from_dict(data: dict[str, Any], file: Path) -> Config:
    problems: list[str] = []
    tables = dict(_tables(data, problems))
    top = _Reader(data, "", problems)
    top.known.update(tables)
    top.finish()

    dj = _Reader(tables["django"], "django", problems)
    settings = dj.get("settings", os.environ.get("DJANGO_SETTINGS_MODULE", ""), _as_str, "a module path")
    pythonpath = dj.get("pythonpath", (), _as_str_list, "a list of folders")
    dj.finish()
    if not settings:
        problems.append(
            'django.settings is missing; set it to your settings module, e.g. settings = "mysite.settings".'
        )

    supervisor = _read_supervisor(tables["supervisor"], problems)
    pools: dict[str, PoolConfig] = {}
    for name, table in tables["pools"].items():
        pool = _read_pool(name, table, problems)
        if pool is not None:
            pools[name] = pool
    if not tables["pools"]:
        pools["default"] = PoolConfig(name="default", queues=("default",))

    sched = _Reader(tables["scheduler"], "scheduler", problems)
    scheduler = SchedulerConfig(enabled=sched.get("enabled", True, _as_bool, "true or false"))
    sched.finish()

    for name in pools:
        longest = len(f"{supervisor.node}:{name}") + _WORKER_ID_SUFFIX_RESERVE
        if longest > WORKER_ID_MAX_LENGTH:
            problems.append(
                f"supervisor.node {supervisor.node!r} and pool {name!r} make worker ids longer than "
                f"{WORKER_ID_MAX_LENGTH} characters; shorten the node or the pool name."
            )

    task_timeouts = _read_task_timeouts(tables["task_timeouts"], problems)
    retries = _read_retries(tables["retries"], problems)
    retention = _read_retention(tables["retention"], problems)
    limits = _read_limits(tables["limits"], problems)
    if problems:
        raise ConfigError(problems)
    return Config(
        path=file.resolve(),
        django=DjangoConfig(settings=settings, pythonpath=pythonpath),
        supervisor=supervisor,
        pools=pools,
        task_timeouts=task_timeouts,
        retries=retries,
        scheduler=scheduler,
        retention=retention,
        limits=limits,
    )


def _read_retention(table: dict[str, Any], problems: list[str]) -> RetentionConfig:
    r = _Reader(table, "retention", problems)
    expect = 'a duration such as "7d" or "12h"'
    retention = RetentionConfig(
        successful=r.get("successful", None, parse_duration, expect),
        failed=r.get("failed", None, parse_duration, expect),
        schedule_runs=r.get("schedule_runs", None, parse_duration, expect),
        figures=r.get("figures", 7 * 86400.0, parse_duration, expect),
    )
    r.finish()
    return retention


def _read_limits(table: dict[str, Any], problems: list[str]) -> dict[str, FlowLimit]:
    return _per_task(
        table, "limits", problems, lambda task_path, value, path: _read_limit(task_path, value, path, problems)
    )


def _read_limit(task_path: str, value: dict[str, Any], path: str, problems: list[str]) -> FlowLimit:
    r = _Reader(value, path, problems)
    limit = FlowLimit(
        task_path,
        concurrency=r.get("concurrency", None, _positive_int, "an integer of at least 1"),
        rate=r.get("rate", None, parse_rate, 'a rate such as "10/s", "100/m" or "1000/h"'),
        key=r.get("key", None, _key_name, 'an argument\'s name, or its position such as "0"'),
    )
    r.finish()
    if limit.concurrency is None and limit.rate is None and "concurrency" not in value and "rate" not in value:
        problems.append(f'{path} limits nothing; set concurrency = N, rate = "N/s", or both.')
    return limit


def _key_name(value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise TypeError("")
    text = str(value)
    if not (text.isidentifier() or text.isdigit()):
        raise ValueError("")
    return text
