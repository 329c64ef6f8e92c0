"""`GuardedSite`: an aiohttp site whose own accept loop enforces the connection caps.

The one rule: a connection over a cap is closed right after accept(2) — before any TLS work —
with a reset (no TIME_WAIT on the server), and counted; everything admitted gets
`tls_handshake_timeout` for its TLS handshake and then runs under `ConnectionGuard`.

Why an own accept loop rather than `loop.create_server`: the loop calls the protocol factory
of a TLS server before the handshake and without the peer's address, and tells the protocol
nothing when a handshake fails, so neither a per-address cap at accept nor an exact count of
open descriptors fits there. Here each accepted socket goes through
`loop.connect_accepted_socket(..., ssl_handshake_timeout=...)` (uvloop and asyncio both take
it); a handshake that fails or times out gives its slot back at once.

Each admitted connection's protocol is `GuardedProtocol` around the handler the runner's
server makes (`server()`, as `loop.create_server` would call it): any `RequestHandler`
subclass the runner chose (parser-error answers, `rejections.py`) is kept as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import struct
from typing import Final

import structlog
from aiohttp import web
from rustynet.adapters.http_api.connection_guard import (
    Connection,
    ConnectionGuard,
    GuardedProtocol,
)

ACCEPT_PAUSE: Final = 0.1  # seconds to back off when accept(2) runs out of descriptors/memory
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST
_log = structlog.get_logger("rustynet.connections")


class _AcceptServer(asyncio.AbstractServer):
    """What `BaseSite` and `BaseRunner.addresses` need of a server: sockets and close()."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock: socket.socket | None = sock
        self._listening = (sock,)
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._listening if self._sock is not None else ()

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        for task in list(self._tasks):
            task.cancel()
        if sock is not None:
            sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._sock is not None

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await self._closed.wait()


class GuardedSite(web.BaseSite):
    """A TCP+TLS site for `runner` on `host:port` under `guard` (see the module docstring)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        guard: ConnectionGuard,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._tls = ssl_context
        self._guard = guard

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        server = _AcceptServer(sock, loop)
        self._server = server
        self._port = sock.getsockname()[1]
        self._guard.start()
        server.track(loop.create_task(self._accept_loop(sock, server)))

    async def stop(self) -> None:
        await super().stop()
        await self._guard.stop()

    async def _accept_loop(self, sock: socket.socket, server: _AcceptServer) -> None:
        loop = asyncio.get_running_loop()
        guard = self._guard
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if not server.is_serving():
                    return
                if exc.errno != errno.ECONNABORTED:  # a client gone before accept: nothing
                    # Out of descriptors or memory (or worse): say so, and let it pass.
                    _log.warning("connections.accept_failed", errno=exc.errno)
                    await asyncio.sleep(ACCEPT_PAUSE)
                continue
            slot = guard.admit(address[0])
            if slot is None:
                _reset(conn)
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server.track(loop.create_task(self._open(conn, slot)))

    async def _open(self, conn: socket.socket, slot: Connection) -> None:
        """TLS handshake under its deadline; on failure the slot and socket go at once."""
        loop = asyncio.get_running_loop()
        timeout = self._guard.limits.tls_handshake_timeout
        started = loop.time()
        try:
            await loop.connect_accepted_socket(
                lambda: self._make_protocol(slot),
                conn,
                ssl=self._tls,
                ssl_handshake_timeout=timeout,
            )
        except asyncio.CancelledError:
            slot.release()
            _close_quietly(conn)
            raise
        except Exception as exc:  # noqa: BLE001 - whatever ends the handshake frees the slot
            # asyncio/uvloop raise ConnectionAbortedError at the handshake deadline.
            late = isinstance(exc, ConnectionAbortedError) and loop.time() - started >= timeout
            self._guard.count_handshake_end(timed_out=late)
            slot.release()
            _close_quietly(conn)

    def _make_protocol(self, slot: Connection) -> GuardedProtocol:
        server = self._runner.server
        assert server is not None  # BaseSite refuses to exist before runner.setup()
        return GuardedProtocol(server(), slot)


def _reset(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    conn.close()


def _close_quietly(conn: socket.socket) -> None:
    if conn.fileno() != -1:
        with contextlib.suppress(OSError):
            conn.close()


__all__ = ["GuardedSite"]
