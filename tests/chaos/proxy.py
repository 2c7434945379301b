"""A TCP proxy on 127.0.0.1 that a test puts between the supervisor and PostgreSQL, and breaks.

It runs an asyncio loop in a daemon thread; the test steers it from its own thread:

- ``drop()``: reset every open connection (a database restart, a failover);
- ``refuse()``: stop listening, so new connections are refused (the database is down);
- ``stall()``: stop moving bytes, open connections hang and new ones wait (a network partition);
- ``blackhole()``: accept, read and discard everything, never answer (a dead load balancer);
- ``restore()``: back to normal; stalled connections resume, blackholed ones are reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 65536  # bytes moved per read
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, like a dead peer


@dataclass
class ProxyStats:
    accepted: int = 0
    dropped: int = 0  # connections reset by drop(), refuse() or restore() after a blackhole


class _Link:
    """One client connection and, once flowing, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.blackholed = False

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._blackhole = False

    # -- steering, from the test's thread -------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._flow(True))
        self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def drop(self) -> int:
        """Reset every open connection; returns how many."""
        return self._call(self._reset_all())

    def refuse(self) -> int:
        """Stop listening (new connections are refused) and reset the open ones."""
        self._call(self._unlisten())
        return self.drop()

    def stall(self) -> None:
        self._call(self._flow(False))

    def blackhole(self) -> None:
        self._call(self._set_blackhole())

    def restore(self) -> None:
        self._call(self._restore())

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- inside the proxy's loop ------------------------------------------------------------

    async def _flow(self, on: bool) -> None:
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.reset()
        self._links.clear()
        self.stats.dropped += len(links)
        return len(links)

    async def _set_blackhole(self) -> None:
        self._blackhole = True
        for link in self._links:
            link.blackholed = True

    async def _restore(self) -> None:
        for link in [link for link in self._links if link.blackholed]:
            link.reset()
            self._links.discard(link)
            self.stats.dropped += 1
        self._blackhole = False
        self._flowing.set()
        await self._listen()

    async def _shutdown(self) -> None:
        await self._unlisten()
        await self._reset_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(writer)
        link.blackholed = self._blackhole
        self._links.add(link)
        try:
            if link.blackholed:
                await self._discard(reader, link)
                return
            await self._flowing.wait()
            up_reader, link.upstream = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(self._pump(reader, link.upstream, link), self._pump(up_reader, writer, link))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if link in self._links:
                self._links.discard(link)
                link.reset()

    async def _discard(self, reader: asyncio.StreamReader, link: _Link) -> None:
        while link in self._links and await reader.read(CHUNK):
            pass

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        """Copy one direction until EOF; waits while stalled, discards while blackholed."""
        while True:
            await self._flowing.wait()
            data = await reader.read(CHUNK)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            if link.blackholed:
                continue
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
