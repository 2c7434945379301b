"""Smoke tests of the older setups, each in its own venv (made by `make venvs`), with real
children processing real tasks:

(b) Django 5.2 + the django-tasks 0.12 backport + django-tasks-db;
(c) django-tasks 0.11 with its own django_tasks.backends.database, the guide's settings verbatim.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from task_supervisor import events, exitcodes
from tests.support import JSON_LOGS, PROJECT, ROOT, JsonLog, matching, pg_connect, render, wait_until

GUIDE = ROOT / "tests" / "projects" / "guide"
TABLE = "django_tasks_database_dbtaskresult"


def venv(name: str) -> Path:
    path = ROOT / f".venv-compat-{name}"
    if not (path / "bin" / "task-supervisor").exists():
        pytest.fail(f"{path} is missing: run `make venvs` (make test does it) to create the compat venvs.")
    return path


class Setup:
    def __init__(self, venv_dir: Path, project: Path, settings: str, engine: str, workdir: Path) -> None:
        self.venv, self.project, self.settings, self.engine = venv_dir, project, settings, engine
        self.workdir = workdir
        self.name = str(workdir / "db.sqlite3") if engine == "sqlite" else f"ts_setup_{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "TS_DB_ENGINE": engine,
            "TS_DB_NAME": self.name,
            "DJANGO_SETTINGS_MODULE": settings,
            "PYTHONPATH": str(project),
            # Its own folder for the default control socket: the setups' node is "compat" in every
            # one of them, and side-by-side test workers must not find each other's supervisor.
            "XDG_RUNTIME_DIR": str(workdir),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "supervisor.log"

    def python(self, *args: str) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "python"), *args],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def create(self) -> None:
        if self.engine == "postgres":
            with pg_connect() as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
        self.python("manage.py", "migrate", "-v0")

    def enqueue(self, code: str) -> list[str]:
        return json.loads(self.python("manage.py", "shell", "-c", code).strip().splitlines()[-1])

    def rows(self) -> dict[str, tuple[str, list[str], object]]:
        query = f"SELECT id, status, worker_ids, return_value FROM {TABLE}"
        if self.engine == "sqlite":
            with sqlite3.connect(self.name) as conn:
                found = conn.execute(query).fetchall()
        else:
            with pg_connect(self.name) as conn:
                found = conn.execute(query).fetchall()
        # SQLite returns JSON columns as text; psycopg decodes jsonb itself.
        decode = (lambda v: json.loads(v) if isinstance(v, str) else v) if self.engine == "sqlite" else (lambda v: v)
        return {str(uuid.UUID(str(i))): (s, decode(w), decode(r)) for i, s, w, r in found}

    def start(self) -> None:
        config = self.workdir / "config.toml"
        config.write_text(
            textwrap.dedent(f"""\
            [django]
            settings = "{self.settings}"
            pythonpath = ["{self.project}"]
            [supervisor]
            node = "compat"
            http = ""
            {JSON_LOGS}
            [pools.default]
            processes = 2
            interval = "100ms"
            """)
        )
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "task-supervisor"), "run", "-c", str(config)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            import psutil

            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(10)
        if self.engine == "postgres":
            with pg_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def wait_done(self, ids: list[str], succeeded: str) -> dict[str, tuple[str, list[str], object]]:
        def done():
            rows = self.rows()
            return all(rows.get(i, ("",))[0] == succeeded for i in ids) and rows

        return wait_until(done, 60, 0.1, message=lambda: f"tasks {succeeded}; the log ends:\n{self.tail()}")

    def events(self, name: str) -> list[dict[str, object]]:
        return matching(JsonLog(self.log_path).read(), name)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(render(line) for line in self.log_path.read_text().splitlines()[-lines:])


@pytest.fixture
def setup_factory(tmp_path):
    made: list[Setup] = []

    def make(name: str, project: Path, settings: str, engine: str) -> Setup:
        setup = Setup(venv(name), project, settings, engine, tmp_path)
        made.append(setup)
        setup.create()
        return setup

    yield make
    for setup in made:
        setup.cleanup()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_setup_b_django_52_with_the_backport_and_django_tasks_db(setup_factory, engine):
    setup = setup_factory("b", PROJECT, "tsproject.settings", engine)
    ids = setup.enqueue(
        "import json; from tsapp.tasks import add; print(json.dumps([str(add.enqueue(i, 1).id) for i in range(6)]))"
    )
    setup.start()
    rows = setup.wait_done(ids, "SUCCESSFUL")
    for task_id in ids:
        _, workers, _value = rows[task_id]
        assert len(workers) == 1 and workers[0].startswith("compat:default:")
    assert sorted(rows[i][2] for i in ids) == [1, 2, 3, 4, 5, 6]
    assert setup.stop() == exitcodes.EX_OK


def test_setup_b_hands_a_workflow_over_from_step_to_step(setup_factory):
    """Workflows on the backport: a chain into a chord, results passed on (3 -> [4, 5] -> 9)."""
    setup = setup_factory("b", PROJECT, "tsproject.settings", "sqlite")
    (workflow,) = setup.enqueue(
        "import json; from tsapp.tasks import add, total; "
        "from task_supervisor.workflows import chain, chord, group, step; "
        "h = chain(step(add, 1, 2), chord(group(step(add, 1), step(add, 2)), step(total))).enqueue(); "
        "print(json.dumps([h.id]))"
    )
    setup.start()
    read = (
        "import json; from task_supervisor.workflows import WorkflowHandle; "
        f"h = WorkflowHandle({workflow!r}); print(json.dumps([h.state, h.result]))"
    )
    assert wait_until(
        lambda: (found := setup.enqueue(read))[0] != "RUNNING" and found,
        90,
        0.5,
        message=lambda: f"the workflow to end; the log ends:\n{setup.tail()}",
    ) == ["SUCCEEDED", 9]
    assert setup.stop() == exitcodes.EX_OK


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_setup_c_the_guides_greet_user_under_the_supervisor(setup_factory, engine):
    setup = setup_factory("c", GUIDE, "guide.settings", engine)
    setup.start()
    ids = setup.enqueue(
        "import json; from worker_test.tasks import greet_user; "
        "print(json.dumps([str(greet_user.enqueue(name='michaelyin').id)]))"
    )
    rows = setup.wait_done(ids, "SUCCEEDED")
    _status, workers, value = rows[ids[0]]
    assert value == "Hello, michaelyin! Task completed successfully."
    assert workers[0].startswith("compat:default:")
    assert setup.stop() == exitcodes.EX_OK
    assert setup.events(events.HEARTBEATS_OFF)
