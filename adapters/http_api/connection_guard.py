"""Deadlines and caps for every HTTPS connection: slow and idle clients lose their connection.

The one rule: a client cannot hold a connection (a file descriptor, a TLS session, parser
buffers) longer than the deadline of the phase it is in, nor more connections than the caps,
so holding server resources costs a client as much as it costs the server
(`rustynet.domain.connection_limits` names the limits; docs/control-plane.md lists them).

aiohttp has a keep-alive timer and nothing else: no deadline on the TLS handshake (the loop's
`ssl_handshake_timeout` does that, see `guarded_site`), on request headers or on a request
body. `GuardedProtocol` wraps the `RequestHandler` the runner's server makes for a connection
and notes the phase the connection is in; `ConnectionGuard` keeps the caps and, a few times
per shortest timeout, aborts every connection past its phase's deadline:

    phase     from                                        deadline
    header    connection ready (TLS done), or first byte   + header_timeout
              of a request after a response
    body      request headers parsed, body not complete   + body_timeout
    idle      response sent, no byte of a next request     + keepalive_timeout
    (served)  body complete: the handler runs             none (long polls, WebSockets)

A timed-out connection is aborted (no TLS close_notify exchange to wait for; the descriptor is
freed at once) and counted in `rustynet_connections_timed_out_total{phase}`. A response is
noticed as finished at the next sweep, so the keep-alive deadline may start up to one sweep
late (in the client's favour).

Composition: the guard WRAPS the protocol instead of subclassing it, so whatever handler the
runner's `web.Server` makes (`RejectingRequestHandler` of `support/rejections.py`, which answers
parser errors) keeps all its behaviour; the wrapper forwards every protocol call and reads,
without changing, a few of aiohttp's handler attributes (`_request_count`, `_messages`,
`_request_in_progress`, `_current_request`, `_upgraded`, `_payload_parser`; aiohttp is pinned
in requirements.lock and the slowloris tests exercise each). After a WebSocket upgrade the
wrapper only forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Literal

import structlog
from aiohttp.web_protocol import RequestHandler
from rustynet.adapters.support.prometheus import (
    counter,
    gauge,
    labelled_counter,
    render_families,
)

from rustynet.domain.connection_limits import ConnectionLimits
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.limits import LimitPolicy, ip_key

REFUSAL_LOG_INTERVAL: Final = 60.0  # seconds between two "connections refused" log lines
MIN_SWEEP: Final = 0.05
MAX_SWEEP: Final = 1.0
Phase = Literal["tls_handshake", "header", "body", "idle"]
Refusal = Literal["per_ip", "total"]
PHASES: Final[tuple[Phase, ...]] = ("tls_handshake", "header", "body", "idle")
REFUSALS: Final[tuple[Refusal, ...]] = ("per_ip", "total")
_KEYS: Final = LimitPolicy()  # IPv4 /32, IPv6 /64: the request limiter's keying
_log = structlog.get_logger("rustynet.connections")


class Connection:
    """One admitted connection: its cap slot and the phase bookkeeping of its handler."""

    __slots__ = (
        "_guard",
        "first_byte_at",
        "handler",
        "headers_at",
        "idle_since",
        "key",
        "pending",
        "ready_at",
        "released",
        "served",
        "upgraded",
    )

    def __init__(self, guard: ConnectionGuard, key: str) -> None:
        self._guard = guard
        self.key = key
        self.handler: RequestHandler | None = None
        self.ready_at = 0.0
        self.first_byte_at: float | None = None
        self.headers_at = 0.0
        self.idle_since = 0.0
        self.pending = False  # a request was parsed and not yet seen finished
        self.served = False
        self.upgraded = False
        self.released = False

    def made(self, handler: RequestHandler) -> None:
        """TLS is up and aiohttp took the connection: the header deadline starts."""
        self.handler = handler
        self.ready_at = self._guard.now()
        self._guard.watch(self)

    def release(self) -> None:
        """The connection is gone (or never got past TLS): free its slot, once."""
        if not self.released:
            self.released = True
            self._guard.release(self)
        self.handler = None

    def deadline(self, limits: ConnectionLimits, now: float) -> tuple[float, Phase] | None:
        """When this connection's current phase ends, and which phase (None: served)."""
        h = self.handler
        if h is None or self.upgraded or h._upgraded:
            return None
        if h._request_in_progress or h._messages:
            self.pending = True
            request = h._current_request
            if request is None or request.content.is_eof():
                return None
            return self.headers_at + limits.body_timeout, "body"
        if self.pending:  # the request seen last time (or parsed since) has been answered
            self.pending = False
            self.served = True
            self.idle_since = now
        if self.first_byte_at is not None:
            return self.first_byte_at + limits.header_timeout, "header"
        if self.served:
            return self.idle_since + limits.keepalive_timeout, "idle"
        return self.ready_at + limits.header_timeout, "header"

    def abort(self) -> None:
        """Drop the connection now: no TLS shutdown exchange, the descriptor is freed."""
        transport = self.handler.transport if self.handler is not None else None
        if transport is not None:
            transport.abort()


class GuardedProtocol(asyncio.Protocol):
    """The protocol of one admitted connection: forwards to aiohttp's handler, notes phases."""

    __slots__ = ("_conn", "_handler")

    def __init__(self, handler: RequestHandler, conn: Connection) -> None:
        self._handler = handler
        self._conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)
        self._conn.made(self._handler)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._handler.connection_lost(exc)
        finally:
            self._conn.release()

    def data_received(self, data: bytes) -> None:
        conn, handler = self._conn, self._handler
        if conn.upgraded:  # a WebSocket session: nothing to time, only forward
            handler.data_received(data)
            return
        if data and conn.first_byte_at is None and not conn.pending:
            conn.first_byte_at = conn._guard.now()
        parsed = handler._request_count
        handler.data_received(data)
        if handler._request_count != parsed:
            conn.pending = True
            conn.headers_at = conn._guard.now()
            conn.first_byte_at = None
        if handler._payload_parser is not None:
            conn.upgraded = True

    def eof_received(self) -> bool | None:
        self._handler.eof_received()
        return None  # aiohttp's handler keeps nothing open on EOF: let the transport close

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class ConnectionGuard:
    """The caps (admit/release at accept) and the deadlines (a periodic sweep) of a listener."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused: dict[Refusal, int] = dict.fromkeys(REFUSALS, 0)
        self.timed_out: dict[Phase, int] = dict.fromkeys(PHASES, 0)
        self.tls_failed = 0
        self._per_key: dict[str, int] = {}
        self._watched: set[Connection] = set()
        self._unlogged: dict[Refusal, int] = dict.fromkeys(REFUSALS, 0)
        self._next_refusal_log = 0.0
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        """The event loop's clock (monotonic seconds)."""
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        return loop.time()

    # --- caps ------------------------------------------------------------------------------

    def admit(self, address: str) -> Connection | None:
        """A slot for a connection from `address`, or None (refused and counted) over a cap."""
        try:
            key = ip_key(address, _KEYS)
        except LocalProtocolError:
            key = address  # not an IP (a test's UNIX socket): its own key
        reason: Refusal | None = None
        if self.open >= self.limits.max_connections:
            reason = "total"
        elif self._per_key.get(key, 0) >= self.limits.max_connections_per_ip:
            reason = "per_ip"
        if reason is not None:
            self.refused[reason] += 1
            self._unlogged[reason] += 1
            self._log_refusals()
            return None
        self.open += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return Connection(self, key)

    def release(self, conn: Connection) -> None:
        """Give back `conn`'s slot (called once, by `Connection.release`)."""
        self._watched.discard(conn)
        self.open -= 1
        left = self._per_key.get(conn.key, 1) - 1
        if left > 0:
            self._per_key[conn.key] = left
        else:
            self._per_key.pop(conn.key, None)

    def count_handshake_end(self, *, timed_out: bool) -> None:
        """A TLS handshake that did not complete: past its deadline, or failed."""
        if timed_out:
            self.timed_out["tls_handshake"] += 1
        else:
            self.tls_failed += 1

    def _log_refusals(self) -> None:
        now = self.now()
        if now < self._next_refusal_log or not any(self._unlogged.values()):
            return
        self._next_refusal_log = now + REFUSAL_LOG_INTERVAL
        _log.warning(
            "connections.refused",
            per_ip=self._unlogged["per_ip"],
            total=self._unlogged["total"],
            max_connections=self.limits.max_connections,
            max_connections_per_ip=self.limits.max_connections_per_ip,
            next_log_after_seconds=REFUSAL_LOG_INTERVAL,
        )
        self._unlogged = dict.fromkeys(REFUSALS, 0)

    # --- deadlines -------------------------------------------------------------------------

    def watch(self, conn: Connection) -> None:
        """Check `conn`'s deadlines from now on (its handler is connected)."""
        if not conn.released:
            self._watched.add(conn)

    def start(self) -> None:
        """Start the sweep (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = self._loop.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop the sweep."""
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def sweep_interval(self) -> float:
        """Seconds between sweeps: a quarter of the shortest timeout, within 50 ms .. 1 s."""
        return min(MAX_SWEEP, max(MIN_SWEEP, self.limits.shortest_timeout / 4))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.sweep()

    def sweep(self) -> int:
        """Abort every connection past its deadline; how many were aborted."""
        now = self.now()
        late: list[tuple[Connection, Phase]] = []
        for conn in self._watched:
            due = conn.deadline(self.limits, now)
            if due is not None and due[0] <= now:
                late.append((conn, due[1]))
        for conn, phase in late:
            self.timed_out[phase] += 1
            conn.abort()
        self._log_refusals()
        return len(late)

    # --- metrics ---------------------------------------------------------------------------

    def render_metrics(self) -> str:
        """Prometheus text (format 0.0.4) of the guard's gauges and counters."""
        return render_families(
            (
                gauge(
                    "rustynet_connections_open",
                    "Client connections open now (TLS handshakes too).",
                    self.open,
                ),
                labelled_counter(
                    "rustynet_connections_refused_total",
                    "Connections closed at accept: over a cap.",
                    "reason",
                    self.refused.items(),
                ),
                labelled_counter(
                    "rustynet_connections_timed_out_total",
                    "Connections closed at a deadline.",
                    "phase",
                    self.timed_out.items(),
                ),
                counter(
                    "rustynet_connections_tls_failed_total",
                    "TLS handshakes that failed early.",
                    self.tls_failed,
                ),
            )
        )


__all__ = ["Connection", "ConnectionGuard", "GuardedProtocol"]
