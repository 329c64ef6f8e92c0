"""Serving an HTTPS app until SIGTERM/SIGINT: what `rustynet-control serve` and
`rustynet-relay serve` share.

The connection caps are fitted to the descriptor limit first (`connection_guard`), so clients
can never use up the descriptors; the app's runner is served through a `GuardedSite` (deadlines
and caps on every connection, around the handler the runner makes); the ready line goes to
stderr once the socket listens; SIGTERM or SIGINT stops the server cleanly (exit 0), and an
optional SIGHUP handler (the control plane's relay reload) runs while it serves.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from collections.abc import Callable, Sequence

import structlog
from aiohttp import web

from rustynet.adapters.http_api.connection_guard import ConnectionGuard
from rustynet.adapters.http_api.guarded_site import GuardedSite
from rustynet.adapters.stun.server import StunServer
from rustynet.bootstrap.process import fit_connections_to_fd_limit
from rustynet.domain.connection_limits import ConnectionLimits
from rustynet.domain.tls_pin import SpkiPin

_log = structlog.get_logger(__name__)


def connection_guard(limits: ConnectionLimits) -> ConnectionGuard:
    """The guard for `limits`, its cap lowered (and the operator told) if the descriptor limit
    cannot hold it."""
    fitted, warning = fit_connections_to_fd_limit(limits)
    if warning is not None:
        _log.warning("server.connections_capped", detail=warning)
    return ConnectionGuard(fitted)


async def serve_until_stopped(
    runner: web.AppRunner,
    listen: tuple[str, int],
    *,
    ssl_context: ssl.SSLContext,
    guard: ConnectionGuard,
    backlog: int,
    ready: str,
    pin: SpkiPin,
    on_hangup: Callable[[], None] | None = None,
    before_ready: Callable[[], None] | None = None,
    stun: StunServer | None = None,
) -> None:
    """Serve `runner` on `listen` until SIGTERM/SIGINT, then clean the runner up.

    `ready` starts the line written to stderr once listening (`READY listening on HOST:PORT
    pin PIN`, which tests and operators read); `before_ready` runs just before it; `on_hangup`
    handles SIGHUP meanwhile; `stun` (the STUN service, UDP) is bound before the ready line
    and closed on the way out."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = [signal.SIGTERM, signal.SIGINT]
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    if on_hangup is not None:
        signals.append(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await runner.setup()
        host, port = listen
        site = GuardedSite(
            runner, host, port, ssl_context=ssl_context, guard=guard, backlog=backlog
        )
        await site.start()
        if stun is not None:
            await _start_stun(stun)
        if before_ready is not None:
            before_ready()
        sys.stderr.write(f"{ready} listening on {host}:{port} pin {pin.to_text()}\n")
        sys.stderr.flush()
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        if stun is not None:
            stun.close()
        await runner.cleanup()


def stun_server(enabled: bool, listen: Sequence[tuple[str, int]]) -> StunServer | None:
    """The STUN service `[stun]` asks for (None when disabled)."""
    return StunServer(listen) if enabled else None


async def _start_stun(stun: StunServer) -> None:
    """Bind the STUN service; a port already taken (another STUN server on the host, say) is
    logged as an error and the HTTPS service runs on without it: discovery is an aid, the
    control plane's and the relay's own service must not depend on it."""
    try:
        await stun.start()
    except OSError as exc:
        _log.error(
            "stun.bind_failed",
            addresses=[f"{host}:{port}" for host, port in stun.listen],
            error=str(exc),
        )
