"""Small request/response servers that live inside the supervisor's selector loop.

One mechanism serves both the HTTP listener (/livez, /readyz, /metrics) and the control socket
(`status`): accept without blocking, read one request head with a size limit and a deadline,
answer, close. A client that connects and sends nothing, or trickles bytes, is dropped at its
deadline and never holds the loop: every socket is non-blocking and every read or write is one
call that the selector said would not block.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from task_supervisor import events

log = logging.getLogger(__name__)

CLIENT_DEADLINE = 5.0  # seconds a client has to send its request and read the answer
MAX_HEAD = 8192  # bytes of request head accepted
MAX_CLIENTS = 100  # connections beyond this are closed at once


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class _Client:
    def __init__(self, server: _Server, sock: socket.socket, deadline: float) -> None:
        self.server = server
        self.sock = sock
        self.deadline = deadline
        self.inbox = b""
        self.outbox = b""

    def on_event(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ and not self.outbox:
                self._read()
            if mask & selectors.EVENT_WRITE and self.outbox:
                self._write()
        except OSError:
            self.server.drop(self)

    def _read(self) -> None:
        data = self.sock.recv(4096)
        if not data:
            self.server.drop(self)
            return
        self.inbox += data
        if self.server.terminator in self.inbox:
            head = self.inbox.split(self.server.terminator, 1)[0]
            self.reply(self.server.handler(head))
        elif len(self.inbox) > MAX_HEAD:
            self.reply(self.server.too_large())

    def reply(self, data: bytes) -> None:
        self.outbox = data
        self.server.selector.modify(self.sock, selectors.EVENT_WRITE, self.on_event)
        self._write()

    def _write(self) -> None:
        sent = self.sock.send(self.outbox)
        self.outbox = self.outbox[sent:]
        if not self.outbox:
            self.server.drop(self)


class _Server:
    """Accepts clients and hands each complete request head to ``handler``."""

    terminator = b"\n"

    def __init__(self, sock: socket.socket, handler: Callable[[bytes], bytes], clock: Callable[[], float]) -> None:
        self.sock = sock
        self.handler = handler
        self.clock = clock
        self.clients: dict[int, _Client] = {}
        self.selector: selectors.BaseSelector | None = None  # type: ignore[assignment]

    def start(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.sock.setblocking(False)
        selector.register(self.sock, selectors.EVENT_READ, self.on_event)

    def on_event(self, mask: int) -> None:
        for _ in range(32):  # accept a burst, but give the loop back
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.warning("Out of file descriptors accepting a client", extra={"event": events.ACCEPT_FAILED})
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(self, sock, self.clock() + CLIENT_DEADLINE)
            self.clients[sock.fileno()] = client
            self.selector.register(sock, selectors.EVENT_READ, client.on_event)

    def drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self.clients.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(client.sock)
        client.sock.close()

    def tick(self, now: float) -> None:
        for client in [c for c in self.clients.values() if now >= c.deadline]:
            self.drop(client)

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self.clients.values()), default=None)

    def too_large(self) -> bytes:
        return b""

    def fds(self) -> list[int]:
        return [self.sock.fileno(), *self.clients]

    def close(self) -> None:
        for client in list(self.clients.values()):
            self.drop(client)
        with contextlib.suppress(KeyError, ValueError):
            if self.selector is not None:
                self.selector.unregister(self.sock)
        self.sock.close()


class HttpServer(_Server):
    """GET/HEAD on exact paths; anything else 404 or 405; every answer closes the connection."""

    terminator = b"\r\n\r\n"

    def __init__(self, address: str, routes: Mapping[str, Callable[[], Response]], clock: Callable[[], float]) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self.routes = routes
        super().__init__(sock, self.respond, clock)

    @property
    def bound_address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def respond(self, head: bytes) -> bytes:
        try:
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, version = request_line.split(" ")
            if not version.startswith("HTTP/"):
                raise ValueError(version)
        except ValueError:
            return _http(Response(400, b'{"error": "malformed request"}\n'), head_only=False)
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _http(Response(405, b'{"error": "only GET and HEAD"}\n'), head_only=False)
        route = self.routes.get(path)
        if route is None:
            return _http(Response(404, b'{"error": "not found"}\n'), head_only=method == "HEAD")
        try:
            response = route()
        except Exception:
            log.exception("Endpoint %s failed", path, extra={"event": events.ENDPOINT_FAILED})
            response = Response(503, b'{"error": "internal error"}\n')
        return _http(response, head_only=method == "HEAD")

    def too_large(self) -> bytes:
        return _http(Response(400, b'{"error": "request head too large"}\n'), head_only=False)


def _http(response: Response, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + response.body


class SupervisorRunning(Exception):
    """Another supervisor answers on the control socket."""


class ControlServer(_Server):
    """A Unix socket, mode 0600, that answers ``status`` with the supervisor's snapshot."""

    def __init__(self, path: str, answer: Callable[[str], bytes], clock: Callable[[], float]) -> None:
        self.path = path
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        sock.listen(16)
        super().__init__(sock, lambda head: answer(head.decode(errors="replace").strip()), clock)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _remove_stale(path: str) -> None:
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: a socket left by a supervisor that died
        return
    finally:
        probe.close()
    raise SupervisorRunning(
        f"another supervisor is running with control socket {path}; stop it, or give this one its own "
        "[supervisor] node or control_socket."
    )


class SupervisorNotRunning(Exception):
    pass


def query(path: str, command: str = "status", timeout: float = 5.0) -> bytes:
    """Client side of the control socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise SupervisorNotRunning(
            f"No supervisor is running: nothing listens on {path} (start one with task-supervisor run -c FILE)."
        ) from None
    with sock:
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def default_socket_path(node: str) -> str:
    """$XDG_RUNTIME_DIR/task-supervisor-NODE.sock, else /tmp/task-supervisor-UID-NODE.sock."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    name = f"task-supervisor-{node}.sock" if runtime else f"task-supervisor-{os.getuid()}-{node}.sock"
    path = os.path.join(runtime or "/tmp", name)
    # sun_path holds 108 bytes; a long path falls back to a checksum of it (the folder included: two
    # runtime folders, two users' sessions or two side-by-side suites, must not share one socket).
    return path if len(path) < 100 else f"/tmp/task-supervisor-{os.getuid()}-{zlib.crc32(path.encode()):08x}.sock"
