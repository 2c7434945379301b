"""Health endpoints, metrics and status of a running supervisor, through real sockets."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request

from task_supervisor import events, exitcodes
from tests.realproc.test_supervision import ONE_POOL, wait_status
from tests.support import config_toml, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body); status 0 while nothing listens yet."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return 0, b""


def observed(tmp_path, pools: str = ONE_POOL) -> tuple[str, int, str]:
    port = free_port()
    sock = str(tmp_path / "control.sock")
    text = config_toml(pools).replace('http = ""', f'http = "127.0.0.1:{port}"\ncontrol_socket = "{sock}"')
    return text, port, sock


def status(config_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "task_supervisor", "status", "-c", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_endpoints_status_and_metrics_while_a_task_runs(supervisor, db, tmp_path):
    from tsapp import tasks

    text, port, sock = observed(tmp_path)
    sup = supervisor(text)
    wait_until(lambda: get(port, "/readyz")[0] == 200, message="ready")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

    silent = socket.create_connection(("127.0.0.1", port))  # connects and sends nothing
    assert get(port, "/livez") == (200, b'{"status": "alive", "phase": "running"}\n')
    assert get(port, "/nope")[0] == 404
    marker = tmp_path / "started"
    running = tasks.sleep.enqueue(3, str(marker))
    wait_until(marker.exists, message="the task to start")

    out = status(sup.config_path)
    assert out.returncode == 0, out.stderr
    assert "busy" in out.stdout and "tsapp.tasks.sleep" in out.stdout and str(running.id) in out.stdout
    snapshot = json.loads(status(sup.config_path, "--json").stdout)
    (child,) = snapshot["pools"][0]["children"]
    assert child["state"] == "busy" and child["task"]["id"] == str(running.id)
    assert child["worker_id"].startswith("testnode:default:0:") and child["rss"] > 0

    wait_status(running, "SUCCESSFUL")
    code, body = get(port, "/metrics")
    metrics = body.decode()
    assert code == 200
    assert 'task_supervisor_tasks_finished_total{pool="default",status="SUCCESSFUL"} 1.0' in metrics
    assert 'task_supervisor_children{pool="default",state="idle"} 1.0' in metrics
    assert "task_supervisor_uptime_seconds" in metrics and 'task_supervisor_info{node="testnode"' in metrics
    silent.close()

    sup.signal(__import__("signal").SIGTERM)
    assert sup.wait_exit() == exitcodes.EX_OK
    assert not os.path.exists(sock)
    out = status(sup.config_path)
    assert out.returncode == 1 and "No supervisor is running" in out.stderr


def test_readyz_says_why_while_draining(supervisor, db, tmp_path):
    from tsapp import tasks

    text, port, _ = observed(tmp_path)
    sup = supervisor(text)
    wait_until(lambda: get(port, "/readyz")[0] == 200, message="ready")
    marker = tmp_path / "started"
    tasks.sleep.enqueue(2, str(marker))
    wait_until(marker.exists, message="the task to start")
    sup.signal(__import__("signal").SIGTERM)
    _code, body = wait_until(lambda: (r := get(port, "/readyz"))[0] == 503 and r, message="not ready")
    assert json.loads(body) == {"ready": False, "reasons": ["supervisor is draining"]}
    assert get(port, "/livez")[0] == 200
    assert sup.wait_exit() == exitcodes.EX_OK


def test_a_second_supervisor_on_the_same_socket_is_refused(supervisor, db, tmp_path):
    text, port, sock = observed(tmp_path)
    first = supervisor(text)
    wait_until(lambda: os.path.exists(sock), message="the control socket")
    second = supervisor(text.replace(str(port), str(free_port())))
    assert second.wait_exit() == exitcodes.EX_CONFIG
    (refused,) = second.events(events.CONTROL_SOCKET_IN_USE)  # its HTTP port is free: the socket is the one taken
    assert sock in refused["message"], refused  # the operator is told which socket
    assert not second.has_event(events.SUPERVISOR_STARTED)
    assert first.proc.poll() is None


def test_json_logs_are_one_object_per_line_with_context(supervisor, db):
    from tsapp import tasks

    sup = supervisor(config_toml(ONE_POOL, extra='log_format = "json"'))
    wait_status(tasks.add.enqueue(1, 2), "SUCCESSFUL")
    sup.signal(__import__("signal").SIGTERM)
    assert sup.wait_exit() == exitcodes.EX_OK
    records = [json.loads(line) for line in sup.log().splitlines() if line.strip()]
    started = next(r for r in records if r.get("event") == "child_started")
    assert started["pool"] == "default" and started["slot"] == 0 and started["pid"] > 0
    assert any("state=SUCCESSFUL" in r["message"] for r in records)  # db_worker's own lines too


def test_a_pool_scales_up_under_a_backlog_and_back_down(supervisor, db):
    from tsapp import tasks

    pools = '[pools.default]\nprocesses = { min = 1, max = 3 }\ninterval = "100ms"\nscale_cooldown = "1s"\n'
    sup = supervisor(config_toml(pools))
    sup.wait_children(1)
    results = [tasks.sleep.enqueue(0.5) for _ in range(24)]
    sup.wait_event(events.POOL_SCALED, pool="default", direction="up", timeout=20)
    sup.wait_children(3, timeout=20)
    for result in results:
        wait_status(result, "SUCCESSFUL", timeout=60)
    sup.wait_event(events.POOL_SCALED, pool="default", direction="down", timeout=30)
    sup.wait_children(1, timeout=20)
    # Never past max: slots fill from the lowest free index, so a fourth child would take slot 3.
    assert {r["slot"] for r in sup.events(events.CHILD_STARTED, pool="default")} == {0, 1, 2}
