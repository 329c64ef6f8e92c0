"""Peer-map intake: long-poll control for newer signed maps, verify, save, then apply.

The one rule: the tunnel and the firewall only ever hold what the last ACCEPTED peer map says
(or nothing): a map is applied only after `PeerMapAcceptor` verified chain, addressee, expiry
and a serial above the persisted watermark, and the watermark and the map are saved before the
tunnel changes; a rejected map changes nothing, is counted and is logged as the security event
`peer_map.rejected`.

At start (`open`) the saved last good map is re-verified offline and held back: it applies
only when control confirms it current (nothing newer) or after `stored_map_fallback` without
control (`map_source.py`; `status` says which). `IntakeState.applied` is the map the
reconciler follows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import attrs
import structlog

from rustynet.application.node.credentials import Contact, Credentials
from rustynet.application.node.errors import NotEnrolled
from rustynet.application.node.map_source import MapSource
from rustynet.application.node.saved_state import SavedState
from rustynet.application.node.settings import AgentSettings
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.netmap import (
    PeerMap,
    PeerMapAcceptor,
    PeerMapRejected,
    PeerMapTrust,
    accept_peer_map,
)
from rustynet.domain.node_state import NodeState
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import ControlPlaneClient, ControlRejected, is_revocation
from rustynet.ports.relay import RelayEndpoint
from rustynet.ports.wire.v1 import Trust

_log = structlog.get_logger(__name__)


@attrs.define
class IntakeState:
    """The acceptor (trust + watermark), the applied map, its source, the rejections."""

    acceptor: PeerMapAcceptor | None = None
    applied: PeerMap | None = None
    source: MapSource | None = None
    rejected: int = 0


class MapIntake:
    """Owns `IntakeState`; `reconcile` is called after each map it applies."""

    def __init__(
        self,
        *,
        control: ControlPlaneClient,
        credentials: Credentials,
        saved: SavedState,
        clock: Clock,
        settings: AgentSettings,
        contact: Contact,
        reconcile: Callable[[], Awaitable[object]],
    ) -> None:
        self.control, self.credentials, self.saved = control, credentials, saved
        self.clock, self.settings, self.contact = clock, settings, contact
        self._reconcile = reconcile
        self.state = IntakeState()

    @property
    def applied(self) -> PeerMap | None:
        """The map the tunnel follows (None: no peer)."""
        return self.state.applied

    @property
    def watermark(self) -> int | None:
        """The serial a newer map must exceed (None before `open`)."""
        acceptor = self.state.acceptor
        return None if acceptor is None else acceptor.watermark

    def open(self, node: NodeState, now: datetime) -> None:
        """At start: the acceptor from the saved trust and watermark; hold the saved map."""
        trust = self._trust(node.root_certificate, node.signing_certificates, now)
        self.state.acceptor = PeerMapAcceptor(trust, node.node_id, node.peer_map_watermark)
        held = None
        if node.last_peer_map is not None:
            try:
                saved = accept_peer_map(
                    node.last_peer_map, trust, node.node_id, node.peer_map_watermark - 1, now
                )
                if saved.serial == node.peer_map_watermark:
                    held = saved
            except PeerMapRejected as exc:
                _log.info("peer_map.saved_unusable", reason=str(exc)[:200])
        # No peer before control speaks (or the bound passes): see map_source.py.
        self.state.source = MapSource.at_start(now, held, self.settings.stored_map_fallback)

    def clear(self) -> None:
        """Teardown: nothing is applied any more."""
        self.state.applied = None

    def apply_fallback(self, now: datetime) -> None:
        """Apply the held saved map once the bound without control has passed."""
        source = self.state.source
        fallback = source.fallback_due(now) if source else None
        if fallback is not None and self.state.applied is None:
            self.state.applied = fallback
            _log.warning("peer_map.stored_applied", serial=fallback.serial)

    async def poll(self, timeout: float | None = None) -> bool:
        """One long poll; True when a newer map was accepted and applied."""
        source = self.state.source
        wait = self.settings.long_poll_seconds if timeout is None else timeout
        if not self.contact.connected or (source is not None and source.pending):
            wait = 0.0  # (re)connecting: ask without parking, so status and the map catch up now
        await self.credentials.ensure_token()
        after = self.watermark or 0
        try:
            delivery = await self.control.peer_map(self.credentials.node_credentials(), after, wait)
        except ControlRejected as exc:
            if not is_revocation(exc):
                raise
            await self.credentials.renew_token()  # a void token; a revoked node fails here
            delivery = await self.control.peer_map(self.credentials.node_credentials(), after, wait)
        self.contact.connected = True
        if delivery is None:
            # Nothing newer than our watermark: the saved map (held back at start) is current.
            confirmed = source.control_answered(False) if source else None
            if confirmed is not None and self.state.applied is None:
                self.state.applied = confirmed  # the agent's step reconciles it
            return False
        applied = await self.offer(delivery.envelope, delivery.trust)
        if applied and source is not None:
            source.control_answered(True)
        return applied

    async def offer(self, envelope: str, trust: Trust) -> bool:
        """Accept and apply a map; a rejection is logged, counted and changes nothing."""
        node, acceptor = self.saved.current, self.state.acceptor
        if node is None or acceptor is None:
            raise NotEnrolled("start the agent first")
        now = self.clock.now()
        try:
            candidate = self._trust(trust.root_certificate, trust.signing_certificates, now)
            peer_map = accept_peer_map(envelope, candidate, node.node_id, acceptor.watermark, now)
        except (PeerMapRejected, RemoteProtocolError, LocalProtocolError) as exc:
            self.state.rejected += 1
            _log.warning(
                "peer_map.rejected",
                node=node.node_id,
                reason=type(exc).__name__,
                detail=str(exc)[:200],
                watermark=acceptor.watermark,
            )
            return False
        # The watermark is durable before the tunnel changes.
        self.saved.save(
            node.with_peer_map(peer_map.serial, envelope).with_trust(
                trust.root_certificate, tuple(trust.signing_certificates)
            )
        )
        acceptor.trust, acceptor.watermark = candidate, peer_map.serial
        self.state.applied = peer_map
        _log.info("peer_map.applied", serial=peer_map.serial, peers=len(peer_map.peers))
        await self._reconcile()
        return True

    def _trust(self, root: str, signing: tuple[str, ...], now: datetime) -> PeerMapTrust:
        node = self.saved.require("no node state")
        try:
            return PeerMapTrust.from_texts(root, node.root_fingerprint, signing, now)
        except (DecodeError, LocalProtocolError) as exc:
            raise PeerMapRejected(f"trust certificates do not parse: {exc}") from exc

    def is_peer(self, node_id: str) -> bool:
        """True when the applied map lists `node_id` (the relay bridge asks)."""
        applied = self.state.applied
        return applied is not None and any(p.id == node_id for p in applied.peers)

    def home_relay(self) -> RelayEndpoint | None:
        """The first relay of the applied map (every node of a mesh gets the same list)."""
        applied = self.state.applied
        if applied is None or not applied.relays:
            return None
        home = applied.relays[0]
        return RelayEndpoint(home.id, home.url, home.tls_spki_sha256)


__all__ = ["IntakeState", "MapIntake"]
