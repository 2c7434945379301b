"""config.toml: values, defaults, and errors that name the key, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from task_supervisor.config import (
    ConfigError,
    default_node_name,
    load_config,
    parse_duration,
    parse_size,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("2d", 172800.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 parsecs", "s", "-1s", -1, True, [1], "1x", float("inf")])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"), [(1024, 1024), ("512MiB", 512 * 2**20), ("1GiB", 2**30), ("300MB", 300 * 10**6), ("10kb", 10000)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_full_config(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
        [django]
        settings = "mysite.settings"
        pythonpath = [".", "src"]

        [supervisor]
        graceful_timeout = "45s"
        http = ""
        node = "web-1"

        [pools.default]
        processes = 4
        interval = "250ms"
        max_tasks = 100
        timeout = "5m"
        max_memory = "512MiB"
        on_worker_lost = "requeue"

        [pools.reports]
        queues = ["reports", "exports"]
        start = "exec"
        backend = "other"

        [task_timeouts]
        "reports.tasks.build" = "2h"

        [scheduler]
        enabled = false
    """.replace("\n        ", "\n"),
        )
    )
    assert config.django.settings == "mysite.settings"
    assert config.pythonpath_dirs() == [str(tmp_path.resolve()), str((tmp_path / "src").resolve())]
    assert config.supervisor.graceful_timeout == 45 and config.supervisor.http == ""
    assert config.supervisor.node == "web-1"
    default, reports = config.pools["default"], config.pools["reports"]
    assert (default.processes, default.interval, default.max_tasks, default.timeout) == (4, 0.25, 100, 300)
    assert default.queues == ("default",) and default.max_memory == 512 * 2**20
    assert default.on_worker_lost == "requeue" and default.start == "fork"
    assert reports.queues == ("reports", "exports") and reports.start == "exec" and reports.backend == "other"
    assert config.task_timeouts == {"reports.tasks.build": 7200}
    assert config.scheduler.enabled is False


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, '[django]\nsettings = "s"\n'))
    assert list(config.pools) == ["default"]
    assert config.pools["default"].processes == 1
    assert config.supervisor.graceful_timeout == 30 and config.supervisor.http == "127.0.0.1:8787"
    assert config.supervisor.node == default_node_name()


def test_every_problem_is_listed_with_key_path_and_fix(tmp_path):
    found = problems(
        tmp_path,
        """
[django]
settings = "s"
[supervisor]
gracefull_timeout = "3s"
http = "nowhere"
[pools.default]
processes = 0
interval = "5 parsecs"
proceses = 3
[pools.reports]
start = "spawn"
on_worker_lost = "retry"
""",
    )
    assert sorted(found) == sorted(
        [
            "Unknown key supervisor.gracefull_timeout; did you mean supervisor.graceful_timeout?",
            "supervisor.http must be a listen address \"HOST:PORT\", got 'nowhere'; "
            'use "HOST:PORT", or "" to turn the listener off.',
            "pools.default.processes must be an integer of at least 1 or { min = 1, max = 8 }, got 0.",
            "pools.default.interval must be a duration, got '5 parsecs'; "
            'use seconds or a string such as "250ms", "30s", "5m", "1h".',
            "Unknown key pools.default.proceses; did you mean pools.default.processes?",
            'pools.reports.start must be "fork" or "exec", got \'spawn\'.',
            'pools.reports.on_worker_lost must be "fail" or "requeue", got \'retry\'.',
        ]
    )


def test_autoscaled_processes(tmp_path):
    config = load_config(write(tmp_path, '[django]\nsettings = "s"\n[pools.a]\nprocesses = { min = 2, max = 8 }\n'))
    assert (config.pools["a"].processes, config.pools["a"].max_processes) == (2, 8)
    found = problems(tmp_path, '[django]\nsettings = "s"\n[pools.a]\nprocesses = { min = 3, max = 2 }\n')
    assert found == [
        "pools.a.processes must be an integer of at least 1 or { min = 1, max = 8 }, got "
        "{'min': 3, 'max': 2}; min 3 is above max 2."
    ]


def test_bad_toml_names_the_line(tmp_path):
    (problem,) = problems(tmp_path, '[django]\nsettings = "s"\n[pools.default\nprocesses = 2\n')
    assert "invalid TOML" in problem and "line 3" in problem


def test_missing_file_and_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    (problem,) = problems(tmp_path, "[supervisor]\n")
    assert problem.startswith("django.settings is missing")


def test_unknown_table_and_wrong_table_type(tmp_path):
    found = problems(tmp_path, 'pools = 3\n[django]\nsettings = "s"\n[schedular]\nenabled = true\n')
    assert "pools must be a table such as [pools], got 3." in found
    assert "Unknown key schedular; did you mean scheduler?" in found


def test_worker_ids_must_fit_db_worker(tmp_path):
    (problem,) = problems(
        tmp_path, f'[django]\nsettings = "s"\n[supervisor]\nnode = "{"n" * 40}"\n[pools.a-long-pool-name]\n'
    )
    assert "worker ids longer than 64 characters" in problem


def test_long_hostnames_are_shortened():
    assert len(default_node_name("x" * 100) + ":default:999:999999") <= 64
    assert default_node_name("web-1.example") == "web-1.example"


def test_long_pod_names_keep_what_makes_each_replica_unique():
    pods = [f"task-supervisor-of-a-rather-long-project-name-5d8f7c9b4-{suffix}" for suffix in ("x2k8q", "x2k8r")]
    names = [default_node_name(pod) for pod in pods]
    assert names[0] != names[1] and all(name.endswith(pod[-5:]) for name, pod in zip(names, pods, strict=True))
    assert all(len(name + ":default:999:999999") <= 64 for name in names)


def test_a_pool_has_at_most_999_children(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[django]\nsettings = "s"\n[pools.default]\nprocesses = { min = 1, max = 5000 }\n')
    with pytest.raises(ConfigError, match="at most 999 children per pool"):
        load_config(path)


def test_node_timeout_must_leave_room_for_the_lease(tmp_path):
    (problem,) = problems(tmp_path, '[django]\nsettings = "x.settings"\n[supervisor]\nnode_timeout = "8s"\n')
    assert problem.startswith("supervisor.node_timeout must be at least 10s, got 8s")
    assert "two heartbeats must fit" in problem
    config = load_config(write(tmp_path, '[django]\nsettings = "x.settings"\n[supervisor]\nnode_timeout = "10s"\n'))
    assert config.supervisor.beat_interval == 2.5
    assert load_config(write(tmp_path, '[django]\nsettings = "x.settings"\n')).supervisor.beat_interval == 15.0


def test_hung_after(tmp_path):
    text = '[django]\nsettings = "x.settings"\n[supervisor]\nhung_after = "%s"\n'
    assert load_config(write(tmp_path, text % "45s")).supervisor.hung_after == 45.0
    assert problems(tmp_path, text % "0.5s") == ["supervisor.hung_after must be at least 1s, got 0.5s."]
