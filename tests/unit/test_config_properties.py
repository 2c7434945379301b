"""Any config.toml gives a valid Config or a ConfigError whose every problem names its key path.

Hypothesis writes configs from the real key names with plausible and implausible values, stray
keys and tables where values belong (and the reverse); both entry points are checked: the parsed
table (``config_from_dict``) and the file (``load_config``), which must agree.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from task_supervisor.config import (
    LOG_FORMATS,
    ON_WORKER_LOST,
    START_METHODS,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_duration,
    parse_size,
)

CONFIG_PATH = Path("/nonexistent/config.toml")  # config_from_dict only records it
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
INT64 = (-(2**63), 2**63 - 1)  # TOML's integer range

# -- values ---------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)  # TOML strings hold no surrogates
key_text = st.one_of(st.sampled_from(["", "default", "a.b", "x y", "é", "[q]", '"', "\\"]), text)
scalars = st.one_of(
    st.booleans(),
    st.integers(*INT64),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
    st.times(),
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key_text, inner, max_size=3), max_leaves=6
)

digits = st.integers(0, 10**12).map(str)
durations = st.one_of(
    st.sampled_from(["30s", "250ms", "1h30m", "5m", "1d", "1.5s", " 2 m ", "0", "5 parsecs", "", "s", "-1s", "1x"]),
    st.builds(lambda n, unit: f"{n}{unit}", digits, st.sampled_from(["ms", "s", "m", "h", "d", "", "w", "MS"])),
    st.integers(*INT64),
    st.floats(allow_nan=True, allow_infinity=True),
)
sizes = st.one_of(
    st.sampled_from(["512MiB", "1GiB", "300MB", "10kb", "1.5GiB", "0", "-5MiB", "MiB", "12 PiB", ""]),
    st.builds(lambda n, unit: f"{n}{unit}", digits, st.sampled_from(["", "b", "KiB", "mib", "GB", "Tb"])),
    st.integers(*INT64),
)
counts = st.one_of(st.integers(-3, 10), st.integers(*INT64), st.booleans(), st.floats(0, 10), digits)
processes = st.one_of(
    counts,
    st.fixed_dictionaries({}, optional={"min": counts, "max": counts, "step": counts}),
)
names = st.one_of(st.sampled_from(["web-1", "n.o_d-e", "bad name", "n:1", "x" * 60, ""]), text)
addresses = st.sampled_from(["127.0.0.1:8787", "", "0.0.0.0:80", "[::1]:9", "nope", ":80", "h:99999", "h:-1", "h:"])
str_lists = st.one_of(st.lists(st.sampled_from(["default", "reports", "*", "", "a,b"]), max_size=3), text)


def plausible(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the key's kind of value, sometimes anything at all."""
    return st.one_of(value, value, value, anything)


def table(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A table with some of ``fields``, maybe a misspelt key, and now and then no table at all."""
    known = st.fixed_dictionaries({}, optional={k: plausible(v) for k, v in fields.items()})
    stray = st.dictionaries(st.one_of(key_text, st.sampled_from([k + "s" for k in fields])), anything, max_size=1)
    tables = st.builds(lambda a, b: {**b, **a}, known, stray)
    return st.one_of(tables, tables, tables, anything)


RETRY = {
    "max_attempts": counts,
    "backoff": st.sampled_from(["exponential", "fixed", "linear"]),
    "delay": durations,
    "max_delay": durations,
    "jitter": st.booleans(),
    "on": str_lists,
}
POOL = {
    "queues": str_lists,
    "processes": processes,
    "backend": st.sampled_from(["default", "other"]),
    "interval": durations,
    "start": st.sampled_from([*START_METHODS, "spawn"]),
    "max_tasks": counts,
    "timeout": durations,
    "kill_after": durations,
    "max_memory": sizes,
    "on_worker_lost": st.sampled_from([*ON_WORKER_LOST, "retry"]),
    "max_attempts": counts,
    "persistent_connections": st.booleans(),
    "scale_cooldown": durations,
    "retries": table(RETRY),
}
task_paths = st.one_of(st.sampled_from(["app.tasks.send", "x", "", "a b"]), key_text)
CONFIG = {
    "django": table({"settings": st.sampled_from(["mysite.settings", ""]), "pythonpath": str_lists}),
    "supervisor": table(
        {
            "node": names,
            "graceful_timeout": durations,
            "http": addresses,
            "node_timeout": durations,
            "hung_after": durations,
            "control_socket": text,
            "log_format": st.sampled_from([*LOG_FORMATS, "xml"]),
        }
    ),
    "pools": st.one_of(st.dictionaries(st.one_of(names, key_text), table(POOL), max_size=3), anything),
    "task_timeouts": st.one_of(st.dictionaries(task_paths, plausible(durations), max_size=3), anything),
    "retries": st.one_of(st.dictionaries(task_paths, table(RETRY), max_size=2), anything),
    "scheduler": table({"enabled": st.booleans()}),
}
wild_configs = st.builds(
    lambda known, stray: {**stray, **known},
    st.fixed_dictionaries({}, optional=CONFIG),
    st.dictionaries(st.sampled_from(["pool", "supervisors", "timeouts", "x"]), anything, max_size=1),
)

# Configs with only sound values, so that valid ones (with their own pools) come up often too.
good_durations = st.one_of(st.sampled_from(["30s", "250ms", "1h30m", "5m", "2d"]), st.integers(0, 10**6))
good_counts = st.integers(1, 64)
good_names = st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True)
good_queues = st.lists(st.sampled_from(["default", "reports", "*", "emails"]), min_size=1, max_size=3)
GOOD_RETRY = {"max_attempts": good_counts, "backoff": st.sampled_from(["exponential", "fixed"]), "delay": durations}
GOOD_POOL = {
    "queues": good_queues,
    "processes": st.one_of(
        good_counts, st.builds(lambda a, b: {"min": min(a, b), "max": max(a, b)}, good_counts, good_counts)
    ),
    "interval": good_durations,
    "start": st.sampled_from(START_METHODS),
    "max_tasks": good_counts,
    "timeout": good_durations,
    "max_memory": st.sampled_from(["512MiB", "1GiB", 10**9]),
    "on_worker_lost": st.sampled_from(ON_WORKER_LOST),
    "retries": st.fixed_dictionaries({}, optional=GOOD_RETRY),
}
good_configs = st.fixed_dictionaries(
    {"django": st.fixed_dictionaries({"settings": st.just("mysite.settings")})},
    optional={
        "supervisor": st.fixed_dictionaries(
            {}, optional={"node": good_names, "graceful_timeout": good_durations, "http": st.just("127.0.0.1:9")}
        ),
        "pools": st.dictionaries(good_names, st.fixed_dictionaries({}, optional=GOOD_POOL), min_size=1, max_size=3),
        "task_timeouts": st.dictionaries(st.sampled_from(["a.b", "c.d"]), good_durations, max_size=2),
    },
)
configs = st.one_of(wild_configs, good_configs)


# -- what every outcome must satisfy ---------------------------------------------------------


def key_paths(data: dict[str, Any]) -> set[str]:
    """Every key path of ``data``, spelt as the loader spells them in its problems."""
    paths = {"django.settings", "supervisor.node"}  # named even when absent: missing, too long
    for top, value in data.items():
        paths.add(top)
        if not isinstance(value, dict):
            continue
        for key, inner in value.items():
            base = f'{top}."{key}"' if top in ("retries", "task_timeouts") else f"{top}.{key}"
            paths.add(base)
            if top in ("retries", "pools") and isinstance(inner, dict):
                paths |= {f"{base}.{k}" for k in inner}
                if top == "pools" and isinstance(inner.get("retries"), dict):
                    paths |= {f"{base}.retries.{k}" for k in inner["retries"]}
    return paths


def names_its_key(problem: str, paths: set[str]) -> bool:
    return any(problem.startswith((f"{p} ", f"{p}:", f"Unknown key {p};")) for p in paths)


def check_outcome(data: dict[str, Any]) -> Config | list[str]:
    """config_from_dict's result: a sound Config, or problems that each name a key path."""
    try:
        config = config_from_dict(data, CONFIG_PATH)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError lists at least one problem"
        paths = key_paths(data)
        for problem in exc.problems:
            assert isinstance(problem, str) and problem.endswith((".", "?")), problem
            assert names_its_key(problem, paths), (problem, sorted(paths))
        return exc.problems
    check_config(config)
    return config


def check_config(config: Config) -> None:
    assert config.django.settings and config.pools
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", config.supervisor.node)
    assert config.supervisor.log_format in LOG_FORMATS
    for seconds in (config.supervisor.graceful_timeout, config.supervisor.node_timeout, *config.task_timeouts.values()):
        assert math.isfinite(seconds) and seconds >= 0
    for name, pool in config.pools.items():
        assert pool.name == name and pool.queues and all(isinstance(q, str) and q for q in pool.queues)
        assert 1 <= pool.processes <= pool.max_processes
        assert pool.start in START_METHODS and pool.on_worker_lost in ON_WORKER_LOST
        assert pool.max_memory is None or pool.max_memory > 0
        assert all(math.isfinite(s) and s >= 0 for s in (pool.interval, pool.kill_after, pool.scale_cooldown))


# -- the properties ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(configs)
@example({"django": {"settings": "s"}, "pools": {"default": {"processes": {"min": 3, "max": 2}}}})
@example({"django": {"settings": "s"}, "supervisor": {"node": "x" * 60}, "pools": {"p" * 32: {}}})
@example({"django": {"settings": "s"}, "pools": {"a b": {"retries": {"tries": 3}}}})
@example({"django": {"settings": "s"}, "task_timeouts": {"a.b": float("nan")}, "retries": {"": 1}})
@example({"django": [], "supervisor": {"http": 8787}, "pools": {"default": {"max_memory": "1.5GiB"}}})
def test_any_parsed_config_gives_a_config_or_problems_naming_key_paths(data: dict[str, Any]) -> None:
    check_outcome(data)


def to_toml(data: dict[str, Any]) -> str:
    """TOML for a dict of TOML-able values: one ``key = value`` line per top-level key."""
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in data.items())


def _key(key: str) -> str:
    return _string(key)


def _string(value: str) -> str:
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"


def _same(a: Any, b: Any) -> bool:
    """Equality with nan equal to itself."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@PROPERTY_SETTINGS
@given(data=configs)
def test_the_file_loader_agrees_with_the_parsed_table(tmp_path: Path, data: dict[str, Any]) -> None:
    text = to_toml(data)
    parsed = tomllib.loads(text)
    assert _same(parsed, data), text  # the writer above is faithful
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    expected = check_outcome(parsed)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        assert exc.problems == expected
    else:
        assert isinstance(expected, Config) and loaded.pools == expected.pools
        assert loaded.supervisor == expected.supervisor and loaded.retries == expected.retries


@PROPERTY_SETTINGS
@given(st.one_of(text, st.binary(max_size=64).map(lambda b: b.decode("latin-1"))))
@example("[pools.default]\nprocesses = 2\n[pools.default]\n")
@example("pools = 1\n[pools.x]\n")
@example('a = """')
def test_any_file_gives_a_config_or_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    try:
        check_config(load_config(path))
    except ConfigError as exc:
        assert exc.problems and all(p.endswith((".", "?")) for p in exc.problems)


@PROPERTY_SETTINGS
@given(st.one_of(durations, anything))
def test_durations_parse_or_raise_value_or_type_error(value: Any) -> None:
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        return
    assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0


@PROPERTY_SETTINGS
@given(st.one_of(sizes, anything))
def test_sizes_parse_or_raise_value_or_type_error(value: Any) -> None:
    try:
        size = parse_size(value)
    except (ValueError, TypeError):
        return
    assert isinstance(size, int) and size > 0


# -- inputs past Python's own limits ------------------------------------------------------------

HUGE = [
    pytest.param("pools.default.timeout = 1" + "0" * 400, id="integer-duration-beyond-float"),
    pytest.param('pools.default.max_memory = "1' + "0" * 400 + '"', id="size-string-beyond-float"),
    pytest.param('task_timeouts."a.b" = 1' + "0" * 400, id="task-timeout-beyond-float"),
    pytest.param("supervisor.http = 1" + "0" * 4400, id="integer-beyond-python-digit-limit"),
    pytest.param("x = " + "[" * 2000 + "]" * 2000, id="nesting-beyond-recursion-limit"),
]


@pytest.mark.parametrize("line", HUGE)
def test_numbers_and_nesting_past_python_limits_are_config_errors(tmp_path: Path, line: str) -> None:
    """OverflowError, tomllib's ValueError past 4300 digits and RecursionError once escaped."""
    path = tmp_path / "config.toml"
    path.write_text(f'django.settings = "s"\n{line}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems
