"""The in-loop servers, pumped by a real selector in the test's own thread, with a fake clock."""

from __future__ import annotations

import os
import selectors
import socket
import stat

import pytest

from task_supervisor.observe import endpoints
from task_supervisor.observe.endpoints import (
    CLIENT_DEADLINE,
    ControlServer,
    HttpServer,
    Response,
    SupervisorNotRunning,
    SupervisorRunning,
    query,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pump(selector: selectors.BaseSelector, turns: int = 20) -> None:
    for _ in range(turns):
        for key, mask in selector.select(0.02):
            key.data(mask)


@pytest.fixture
def http():
    clock, selector = Clock(), selectors.DefaultSelector()
    big = b"x" * 3_000_000
    server = HttpServer(
        "127.0.0.1:0", {"/ok": lambda: Response(200, b"fine"), "/big": lambda: Response(200, big)}, clock
    )
    server.start(selector)
    yield server, selector, clock
    server.close()
    selector.close()


def ask(http, raw: bytes) -> bytes:
    server, selector, _ = http
    client = socket.create_connection(server.bound_address)
    client.sendall(raw)
    client.setblocking(False)
    data = b""
    for _ in range(500):
        pump(selector, 1)
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    client.close()
    return data


def test_routes_404_405_head_and_malformed(http):
    assert ask(http, b"GET /ok?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").endswith(b"\r\n\r\nfine")
    assert ask(http, b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert ask(http, b"POST /ok HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    head = ask(http, b"HEAD /ok HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert ask(http, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert ask(http, b"GET /" + b"a" * 9000).startswith(b"HTTP/1.1 400")


def test_a_large_body_is_written_in_pieces(http):
    reply = ask(http, b"GET /big HTTP/1.1\r\n\r\n")
    assert reply.endswith(b"x" * 1000) and len(reply) > 3_000_000


def test_a_silent_client_is_dropped_at_its_deadline_and_others_are_served(http):
    server, selector, clock = http
    silent = socket.create_connection(server.bound_address)
    pump(selector, 3)
    assert len(server.clients) == 1
    assert ask(http, b"GET /ok HTTP/1.1\r\n\r\n").endswith(b"fine")
    clock.now += CLIENT_DEADLINE + 0.1
    server.tick(clock.now)
    assert not server.clients
    silent.settimeout(2)
    assert silent.recv(10) == b""  # closed by the server
    silent.close()


def test_control_socket_is_0600_answers_and_refuses_a_second_owner(tmp_path):
    clock, selector = Clock(), selectors.DefaultSelector()
    path = str(tmp_path / "ctl.sock")
    server = ControlServer(path, lambda command: f"you said {command}".encode(), clock)
    server.start(selector)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(SupervisorRunning):
        ControlServer(path, lambda c: b"", clock)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    client.sendall(b"status\n")
    pump(selector, 5)
    assert client.recv(100) == b"you said status"
    client.close()
    server.close()
    assert not os.path.exists(path)
    with pytest.raises(SupervisorNotRunning, match="No supervisor is running"):
        query(path)


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens
    server = ControlServer(path, lambda c: b"", Clock())
    server.close()


def test_a_long_socket_path_falls_back_to_a_checksum_of_the_whole_path(monkeypatch, tmp_path):
    """Two runtime folders (side-by-side suites, two sessions) never share a control socket."""
    first, second = tmp_path / ("a" * 90), tmp_path / ("b" * 90)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(first))
    one = endpoints.default_socket_path("alpha")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(second))
    other = endpoints.default_socket_path("alpha")
    assert one != other and all(len(p) < 100 and p.startswith("/tmp/task-supervisor-") for p in (one, other))
    assert endpoints.default_socket_path("alpha") == other  # the status command finds the same one
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert endpoints.default_socket_path("alpha") == str(tmp_path / "task-supervisor-alpha.sock")
