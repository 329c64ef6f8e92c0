"""The node's link to its home relay: one authenticated session, kept up and renewed.

The one rule: the session is always authenticated by a fresh relay token from control and
the node's identity key, and a lost session is noticed (its receive raises) and remade with
backoff; nothing is sent to a relay the signed peer map does not list with its TLS pin.

Theory of operation. `run()` loops while the agent runs: it takes the home relay (the first
one of the current signed map; none → it waits), asks control for a relay token, connects
through the `RelayTransport` port with the node's identity (the key signs the relay's
challenge through a callback: it never leaves the agent), and splices the session onto the
`RelayBridgePort`. A renewal task presents a new token `renew_before` the session's expiry.
When the session ends (relay restart, network, a refused renewal) the loop backs off
(doubling up to `backoff_max`) and reconnects. `up` says whether a session is live now: the
path controller only chooses the relay path when it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Final

import structlog

from rustynet.domain.errors import RustynetError
from rustynet.domain.keys import Purpose, SigningKey
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import ControlPlaneClient, NodeCredentials
from rustynet.ports.relay import (
    RelayAuth,
    RelayEndpoint,
    RelayError,
    RelaySession,
    RelayTransport,
)
from rustynet.ports.relay_path import RelayBridgePort

_log = structlog.get_logger(__name__)

RENEW_BEFORE: Final = timedelta(seconds=40)
BACKOFF_INITIAL: Final = 0.5
BACKOFF_MAX: Final = 15.0


class RelayLink:
    """Keeps one session with the home relay (see the module docstring)."""

    def __init__(
        self,
        *,
        transport: RelayTransport,
        bridge: RelayBridgePort,
        control: ControlPlaneClient,
        clock: Clock,
        credentials: Callable[[], Awaitable[NodeCredentials]],
        identity: Callable[[], SigningKey],
        trust: Callable[[], tuple[str, tuple[str, ...]]],
        home: Callable[[], RelayEndpoint | None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.transport = transport
        self.bridge = bridge
        self.control = control
        self.clock = clock
        self._credentials = credentials
        self._identity = identity
        self._trust = trust
        self._home = home
        self._sleep = sleep
        self.session: RelaySession | None = None
        self.relay_id: str | None = None
        self.sessions = 0
        self.changed = asyncio.Event()

    @property
    def up(self) -> bool:
        """A session is live now."""
        return self.session is not None

    async def run(self) -> None:
        """Keep a session with the home relay until cancelled."""
        delay = BACKOFF_INITIAL
        while True:
            home = self._home()
            if home is None:
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 5.0)
                continue
            try:
                await self._one_session(home)
                delay = BACKOFF_INITIAL
            except (RelayError, RustynetError) as exc:
                _log.info(
                    "relay.session_lost",
                    relay=home.relay_id,
                    error=type(exc).__name__,
                    retry_in=delay,
                )
            await self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def map_applied(self) -> None:
        """A peer map was applied: `run` looks for the home relay again at once (without this
        it looked every 5 s, so a new node's first relayed packet waited up to 5 s)."""
        self.changed.set()

    async def reconnect(self) -> None:
        """End the current session (if any); `run` connects again after its first backoff
        (0.5 s) from wherever this host is now (its address changed: the old connection is
        dead). A connect still in flight is left to its own timeout."""
        session = self.session
        if session is not None:
            await session.close()

    async def _auth(self, home: RelayEndpoint) -> tuple[RelayAuth, datetime]:
        creds = await self._credentials()
        grant = await self.control.relay_token(creds, home.relay_id)
        identity = self._identity()
        root, signing = self._trust()
        auth = RelayAuth(
            node_id=creds.node_id,
            identity_key=identity.public_key.to_text(),
            token=grant.token,
            root_certificate=root,
            signing_certificates=signing,
            sign=lambda message: identity.sign(Purpose.RELAY_AUTH, message),
        )
        return auth, grant.expires_at

    async def _one_session(self, home: RelayEndpoint) -> None:
        auth, _ = await self._auth(home)
        session = await self.transport.connect(home, auth)
        self.session, self.relay_id = session, home.relay_id
        self.sessions += 1
        _log.info("relay.session_up", relay=home.relay_id)
        renewer = asyncio.create_task(self._renew(session, home), name="relay-renew")
        try:
            await self.bridge.run(session)
        finally:
            self.session = None
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await session.close()

    async def _renew(self, session: RelaySession, home: RelayEndpoint) -> None:
        while True:
            wait = (session.expires_at - self.clock.now() - RENEW_BEFORE).total_seconds()
            await asyncio.sleep(max(wait, 1.0))
            try:
                auth, _ = await self._auth(home)
                await session.renew(auth.token)
            except (RelayError, RustynetError) as exc:
                _log.info("relay.renew_failed", error=type(exc).__name__)
                await session.close()  # the bridge's receive ends; run() reconnects
                return
