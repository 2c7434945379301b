"""What an attacker on the machine, or a hostile config value, must not get.

- the control socket is 0600 and the HTTP listener defaults to loopback; children hold neither;
- the database password is never printed: logs, ``status --json``, ``check``, /metrics, /readyz,
  nor the command lines ``ps`` shows, also while the database is refusing connections;
- children are started without a shell, whatever the config's strings contain.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from task_supervisor import events, exitcodes
from task_supervisor.config import load_config
from task_supervisor.observe import endpoints
from tests.chaos.harness import Figures, free_port, http_get, observed_config, rows, unique_node
from tests.chaos.proxy import FaultProxy
from tests.support import PG_HOST, PG_PORT, PROJECT, Database, SupervisorProcess, config_toml, wait_until

PASSWORD = "s3cretpw-Zq8"
URL_PASSWORD = "urlpw-7Hk2"
SETTINGS_DIR = Path(__file__).parent / "settings"
ONE_CHILD = '[pools.default]\nprocesses = 1\ninterval = "100ms"\n'

# Strings a shell would run; each would create a file named pwned-N in the children's folder.
HOSTILE = ["$(touch pwned-1)", "; touch pwned-2 #", "`touch pwned-3`", "| touch pwned-4", "&& touch pwned-5"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "task_supervisor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_control_socket_is_private_and_http_defaults_to_loopback(supervisor, db: Database, tmp_path, monkeypatch):
    node = unique_node()
    text = config_toml(ONE_CHILD, node=node)
    defaults = tmp_path / "defaults.toml"
    defaults.write_text(text.replace('http = ""\n', ""))
    assert load_config(defaults).supervisor.http.startswith("127.0.0.1:")

    port = free_port()
    sup = supervisor(text.replace('http = ""', f'http = "127.0.0.1:{port}"'))  # the default socket path
    child = psutil.Process(sup.wait_event(events.CHILD_STARTED)["pid"])  # not a helper's short-lived child
    wait_until(lambda: http_get(port, "/livez")[0] == 200, message="the HTTP listener")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(sup.workdir))  # what the fixture gives each supervisor
    path = endpoints.default_socket_path(node)
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    listening = [c.laddr for c in psutil.Process(sup.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    # A forked child must not keep the listener: it could answer probes for a dead supervisor.
    assert not [c for c in child.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert not [c for c in child.net_connections("unix") if c.laddr == path]
    sup.signal(15)
    assert sup.wait_exit() == exitcodes.EX_OK
    assert not os.path.exists(path)


def secret_config(tmp_path: Path, pools: str, node: str) -> tuple[str, int, str]:
    observed = observed_config(pools, tmp_path, node)
    text = observed.text.replace('settings = "tsproject.settings"', 'settings = "secret_settings"')
    text = text.replace(f'pythonpath = ["{PROJECT}"]', f'pythonpath = ["{PROJECT}", "{SETTINGS_DIR}"]')
    return text, observed.port, observed.socket


def everything_printed(sup: SupervisorProcess, port: int, env: dict[str, str]) -> dict[str, str]:
    """Every channel the supervisor speaks on, and the command lines ps shows of its tree."""
    texts = {"log": sup.log()}
    status = cli("status", "-c", str(sup.config_path), "--json", env=env)
    texts["status --json"] = status.stdout + status.stderr
    texts["status"] = (lambda out: out.stdout + out.stderr)(cli("status", "-c", str(sup.config_path), env=env))
    for path in ("/metrics", "/readyz", "/livez"):
        texts[path] = http_get(port, path)[1].decode(errors="replace")
    texts["ps"] = "\n".join(command_lines(sup.pid))
    return texts


def command_lines(pid: int) -> list[str]:
    """What ps shows of a process and its descendants (children come and go while crash-looping)."""
    lines = []
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            lines.append(" ".join(proc.cmdline()))
        except psutil.NoSuchProcess:
            pass
    return lines


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
@pytest.mark.timeout(180)
def test_the_database_password_is_never_printed(supervisor, db: Database, tmp_path):
    from tsapp import tasks

    began = time.monotonic()
    env = {**db.env, "TS_DB_PASSWORD": PASSWORD, "DATABASE_URL": f"postgres://u:{URL_PASSWORD}@127.0.0.1/x"}
    with FaultProxy(PG_HOST, PG_PORT) as proxy:
        env["TS_DB_PORT"] = str(proxy.port)
        text, port, _ = secret_config(tmp_path, ONE_CHILD, unique_node())
        sup = supervisor(text, **env)
        sup.wait_children(1)
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 30, message=lambda: sup.tail())
        done = tasks.add.enqueue(1, 2)
        wait_until(lambda: rows().get(id=done.id).status == "SUCCESSFUL", 30, message="a task to run")
        seen = {f"running: {k}": v for k, v in everything_printed(sup, port, env).items()}

        proxy.refuse()  # errors now: the children's, the chores', the listener's and readiness's
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 30, message="not ready while refused")
        sup.wait_event(events.CHILD_BOOT_FAILED, timeout=30)
        seen.update({f"refused: {k}": v for k, v in everything_printed(sup, port, env).items()})
        checked = cli("check", "-c", str(sup.config_path), env=env)
        assert checked.returncode == exitcodes.EX_CHECK_FAILED and "unreachable" in checked.stderr
        seen["check, refused"] = checked.stdout + checked.stderr
        started = cli("run", "-c", str(sup.config_path), env=env)  # a second one, refused at startup
        assert started.returncode == exitcodes.EX_DATABASE, started.stderr
        seen["run, refused"] = started.stdout + started.stderr
        proxy.restore()

    leaks = {name: text for name, text in seen.items() if PASSWORD in text or URL_PASSWORD in text}
    assert not leaks, {name: text[:2000] for name, text in leaks.items()}
    assert "database unreachable" in seen["refused: /readyz"]
    Figures(
        test="password never printed",
        database=db.engine,
        tasks=1,
        faults=["connections refused while a password is configured"],
        seconds=time.monotonic() - began,
        notes={"channels_scanned": len(seen), "bytes_scanned": sum(len(t) for t in seen.values())},
    ).report()


def test_config_strings_never_reach_a_shell(supervisor, db: Database, tmp_path):
    """Hostile queue names run as literal queue names, in forked and exec'd children alike."""
    from tsapp import tasks

    queues = json.dumps(HOSTILE)
    pools = f"""
[pools.forked]
queues = {queues}
interval = "100ms"

[pools.execd]
queues = {queues}
interval = "100ms"
start = "exec"
"""
    sup = supervisor(config_toml(pools, node=unique_node()))
    sup.wait_children(2)
    results = [tasks.add.using(queue_name=queue).enqueue(1, 1) for queue in HOSTILE]
    for result in results:
        wait_until(lambda r=result: rows().get(id=r.id).status == "SUCCESSFUL", 30, message=lambda: sup.tail())
    served = {rows().get(id=r.id).worker_ids[0].split(":")[1] for r in results}
    assert served <= {"forked", "execd"}

    for folder in (sup.workdir, Path.cwd(), PROJECT):
        assert not list(folder.glob("pwned-*")), list(folder.glob("pwned-*"))


def hostile_configs() -> list[tuple[str, str, int]]:
    """(what, config text, exit code of ``run``): values refused by validation or by Django."""
    plain = config_toml(ONE_CHILD, node=unique_node())
    return [
        ("node", config_toml(ONE_CHILD, node="n; touch pwned-6"), exitcodes.EX_CONFIG),
        ("pool name", config_toml(ONE_CHILD.replace("default", '"p$(touch pwned-7)"')), exitcodes.EX_CONFIG),
        (
            "settings",
            plain.replace('"tsproject.settings"', '"tsproject.settings; touch pwned-8"'),
            exitcodes.EX_SETTINGS,
        ),
        ("backend", plain.replace('interval = "100ms"', 'backend = "d`touch pwned-9`"'), exitcodes.EX_SETTINGS),
    ]


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # refused before any database work
def test_hostile_config_values_are_refused_not_run(db: Database, tmp_path):
    for what, text, code in hostile_configs():
        path = tmp_path / "config.toml"
        path.write_text(text)
        out = subprocess.run(
            [sys.executable, "-m", "task_supervisor", "run", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, **db.env, "XDG_RUNTIME_DIR": str(tmp_path)},
        )
        assert out.returncode == code, (what, out.stderr)
        assert not list(tmp_path.glob("pwned-*")), what
