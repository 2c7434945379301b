"""A user's mistakes get one clear line and a named exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from task_supervisor import __version__, exitcodes
from tests.support import config_toml

POOL = "[pools.default]\nprocesses = 1\n"


def run_cli(tmp_path: Path, command: str, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "task_supervisor", command, "-c", str(path)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), **env},  # a control socket of its own
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_version():
    out = subprocess.run([sys.executable, "-m", "task_supervisor", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"task-supervisor {__version__}"


def test_bad_toml(tmp_path):
    result = run_cli(tmp_path, "run", "[django\nsettings = 1\n")
    assert result.returncode == exitcodes.EX_CONFIG
    assert "invalid TOML" in one_line(result) and "line 1" in result.stderr


def test_unknown_key(tmp_path):
    result = run_cli(tmp_path, "run", config_toml(POOL + "procesess = 2\n"))
    assert result.returncode == exitcodes.EX_CONFIG
    assert one_line(result).endswith("Unknown key pools.default.procesess; did you mean pools.default.processes?")


def test_settings_that_do_not_import(tmp_path):
    result = run_cli(tmp_path, "run", config_toml(POOL).replace("tsproject.settings", "nosuch.settings"))
    assert result.returncode == exitcodes.EX_SETTINGS
    assert "django.settings 'nosuch.settings' does not import" in one_line(result)


def test_a_backend_that_is_not_a_database_backend(tmp_path, db):
    result = run_cli(
        tmp_path, "run", config_toml(POOL).replace("tsproject.settings", "tsproject.settings_immediate"), **db.env
    )
    assert result.returncode == exitcodes.EX_SETTINGS
    line = one_line(result)
    assert "ImmediateBackend, which is not a database backend" in line and "django-tasks-db" in line


def test_an_unknown_backend_alias(tmp_path, db):
    result = run_cli(tmp_path, "run", config_toml(POOL + 'backend = "nope"\n'), **db.env)
    assert result.returncode == exitcodes.EX_SETTINGS
    assert "Task backend 'nope' is not in settings.TASKS" in one_line(result)


def test_an_unreachable_database(tmp_path):
    result = run_cli(tmp_path, "run", config_toml(POOL), TS_DB_ENGINE="postgres", TS_DB_NAME="test", TS_DB_PORT="1")
    assert result.returncode == exitcodes.EX_DATABASE
    line = one_line(result)
    assert "Database 'default' (postgresql test at 127.0.0.1:1) is unreachable" in line


def test_an_unmigrated_database(tmp_path):
    result = run_cli(
        tmp_path, "run", config_toml(POOL), TS_DB_ENGINE="sqlite", TS_DB_NAME=str(tmp_path / "empty.sqlite3")
    )
    assert result.returncode == exitcodes.EX_DATABASE
    assert "run `manage.py migrate` first" in one_line(result)


def test_check_passes_on_a_good_setup(tmp_path, db):
    result = run_cli(tmp_path, "check", config_toml(POOL), **db.env)
    assert result.returncode == exitcodes.EX_OK, result.stderr
    assert "OK" in result.stdout


def test_check_lists_every_problem(tmp_path):
    text = config_toml(POOL + "processes = 0\ninterval = 'soon'\n").replace("processes = 1\n", "")
    result = run_cli(tmp_path, "check", text)
    assert result.returncode == exitcodes.EX_CHECK_FAILED
    assert len(result.stderr.strip().splitlines()) == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "check"])
def test_missing_config_file(tmp_path, command):
    result = subprocess.run(
        [sys.executable, "-m", "task_supervisor", command, "-c", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode in (exitcodes.EX_CONFIG, exitcodes.EX_CHECK_FAILED)
    assert "no such file" in one_line(result)


def test_django_system_check_errors_are_reported_once_instead_of_failing_every_child(tmp_path, db):
    run = run_cli(tmp_path, "run", config_toml(POOL), TS_FAIL_CHECK="1", **db.env)
    assert run.returncode == exitcodes.EX_SETTINGS
    assert "Traceback" not in run.stderr
    assert "system checks found errors (db_worker would refuse to start)" in run.stderr
    assert "tsapp.E001" in run.stderr
    check = run_cli(tmp_path, "check", config_toml(POOL), TS_FAIL_CHECK="1", **db.env)
    assert check.returncode == exitcodes.EX_CHECK_FAILED and "tsapp.E001" in check.stderr
