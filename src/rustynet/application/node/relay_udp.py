"""UDP relay sessions on the node: relayed peers whose tunnel sends straight to the relay's UDP
port for the pair (`relay-udp`, forwarded by the relay's kernel: no Python touches a packet on
either node) instead of through the WebSocket bridge (`relay-wss`).

The one rule (authenticated before trusted): a peer's tunnel is pointed only at the address the
relay granted over the authenticated relay session, only for a peer of the signed map that is
on the relay path, and `relay-udp` stands only on the tunnel's own evidence
(`domain.path.relay_udp`); everywhere else a relayed peer goes through the bridge. The binds go
out from the tunnel's port (`PrePunchPort.send`), through the same NAT mapping as the tunnel's
own packets to that relay port.

This module asks (one task per peer, over the current relay session), sends the binds, nudges
the tunnel, and says which endpoint a relayed peer's tunnel uses; the decisions are the pure
`UdpLeg`'s. A new relay session forgets every leg: the relay dropped the old session's
allocations with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from datetime import datetime
from typing import Final

import attrs
import structlog

from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.nat import NatClass
from rustynet.domain.netmap import PeerEntry
from rustynet.domain.path import relay_udp as legs
from rustynet.domain.path.view import RelayTransport
from rustynet.domain.tunnel import PeerStats, UnderlayEndpoint
from rustynet.domain.udp_relay import AllocationRefusedError, UdpGrant
from rustynet.ports.punch import PrePunchPort
from rustynet.ports.relay import RelaySession

_log = structlog.get_logger(__name__)

MAX_REMEMBERED: Final = 1024
"""Relay addresses remembered as relay endpoints (a node has at most a few per relay peer)."""


@attrs.define
class LegState:
    """Per peer id: the leg, its grant, the ask in flight; the relay session they belong to."""

    legs: dict[str, legs.UdpLeg] = attrs.Factory(dict)
    grants: dict[str, UdpGrant] = attrs.Factory(dict)
    asks: dict[str, asyncio.Task[None]] = attrs.Factory(dict)
    pending: dict[str, tuple[UdpGrant, UnderlayEndpoint]] = attrs.Factory(dict)
    """Grants that arrived since the last plan (the next plan starts their trials)."""
    granted: dict[UnderlayEndpoint, None] = attrs.Factory(dict)
    """Every relay address granted so far (insertion-ordered, bounded): still a relay endpoint,
    never a direct one, after its leg is forgotten (a tunnel may point there until the next
    plan, and packets from it prove nothing about a direct path)."""
    session: RelaySession | None = None
    unavailable: bool = False
    """The relay serves no UDP sessions (`unavailable`): ask no more on this session."""


class UdpRelayLegs:
    """Owns `LegState`; `paths.PathKeeper` asks it for each relayed peer's endpoint."""

    def __init__(
        self,
        policy: legs.UdpLegPolicy,
        puncher: PrePunchPort,
        session: Callable[[], RelaySession | None],
        nudge: Callable[[PeerEntry, datetime], None],
        now: Callable[[], datetime],
        *,
        own_nat: Callable[[], NatClass | None] = lambda: None,
    ) -> None:
        self.policy, self.puncher = policy, puncher
        self._session, self._nudge, self._now = session, nudge, now
        self._own_nat = own_nat
        self.state = LegState()

    def transport(self, peer_id: str) -> RelayTransport:
        """How a relayed peer's packets go: `udp` once the leg is up (proven), else `wss`
        (a trial's second on the UDP port shows as `wss`, as a direct attempt shows as
        `trying`)."""
        leg = self.state.legs.get(peer_id)
        return "udp" if leg is not None and leg.phase is legs.LegPhase.UP else "wss"

    def is_relay_endpoint(self, peer_id: str, endpoint: UnderlayEndpoint | None) -> bool:
        """`endpoint` is a relay address granted for this peer now or before (a relay path,
        never direct evidence)."""
        leg = self.state.legs.get(peer_id)
        if endpoint is None:
            return False
        return (leg is not None and leg.endpoint == endpoint) or endpoint in self.state.granted

    def wake_at(self) -> datetime | None:
        """The soonest time a leg needs a plan (a bind, a nudge, a trial's end)."""
        due = [d for leg in self.state.legs.values() if (d := leg.due(self.policy)) is not None]
        return min(due, default=None)

    def keep_only(self, relayed: set[str]) -> None:
        """Forget the legs of peers no longer on the relay path (or in the map); a new relay
        session forgets them all."""
        s, session = self.state, self._session()
        if session is not s.session:
            relayed = set()
            s.session, s.unavailable = session, False  # `granted` stays: see there
        for gone in [k for k in (*s.legs, *s.asks, *s.pending) if k not in relayed]:
            s.legs.pop(gone, None)
            s.grants.pop(gone, None)
            s.pending.pop(gone, None)
            task = s.asks.pop(gone, None)
            if task is not None:
                task.cancel()

    def close(self) -> None:
        """Cancel the asks in flight (the agent's loop ended)."""
        for task in self.state.asks.values():
            task.cancel()
        self.state = LegState(granted=self.state.granted)

    async def endpoint(
        self,
        peer: PeerEntry,
        bridge: UnderlayEndpoint,
        seen: PeerStats | None,
        now: datetime,
        *,
        confirmed: bool,
    ) -> UnderlayEndpoint:
        """Where a relayed peer's tunnel sends now: the relay's UDP address (trying or up) or
        the bridge; asks, binds and nudges on the way. A peer's first ask waits for a
        handshake through the bridge that `confirmed` the relay path: the first packets go the
        way that works wherever the relay's TCP port does, and the session they start then
        moves to the UDP port without a new handshake (a trial on a network that blocks UDP
        would hold them). Nothing is tried while our own NAT class is `udp-blocked`."""
        s = self.state
        session = s.session
        if session is None or s.unavailable or (not confirmed and peer.id not in s.legs):
            return bridge
        if self._own_nat() is NatClass.UDP_BLOCKED:
            return bridge  # no UDP leaves this network: a trial would only hold packets
        leg = s.legs.get(peer.id)
        if leg is None or leg.retry_due(now):
            self._ask(peer, session, now, leg)
            return bridge
        effects: tuple[legs.LegEffect, ...] = ()
        pending = s.pending.pop(peer.id, None)
        if pending is not None and leg.phase is legs.LegPhase.ASKING:
            # The trial starts at this plan (a grant arrives between plans: started there, its
            # first second would mostly pass before any plan pointed the tunnel at it).
            s.grants[peer.id] = pending[0]
            leg, effects = legs.granted(self.policy, leg, pending[1], now)
            _log.info("relay.udp_granted", peer=peer.name, relay=pending[1].to_text())
        grant = s.grants.get(peer.id)
        read = None
        if seen is not None:
            at_relay = leg.endpoint is not None and seen.underlay_endpoint == leg.endpoint
            read = legs.Read(at_relay, seen.rx_bytes, at_bridge=seen.underlay_endpoint == bridge)
        before = leg.phase
        leg, more = legs.observe(self.policy, leg, now, read)
        s.legs[peer.id] = leg
        if leg.phase is not before and legs.LegPhase.ASKING not in (before, leg.phase):
            _log.info("relay.udp_leg", peer=peer.name, phase=leg.phase.value, was=before.value)
        await self._carry_out(peer, leg, grant, (*effects, *more), now)
        return leg.endpoint if leg.points_at_relay and leg.endpoint is not None else bridge

    async def _carry_out(
        self,
        peer: PeerEntry,
        leg: legs.UdpLeg,
        grant: UdpGrant | None,
        effects: tuple[legs.LegEffect, ...],
        now: datetime,
    ) -> None:
        for effect in effects:
            if isinstance(effect, legs.Nudge):
                self._nudge(peer, now)
            elif grant is not None and leg.endpoint is not None:
                await self.puncher.send(leg.endpoint, grant.bind_packet(effect.counter))

    def _ask(
        self, peer: PeerEntry, session: RelaySession, now: datetime, leg: legs.UdpLeg | None
    ) -> None:
        s = self.state
        if peer.id in s.asks:
            return
        asking = legs.UdpLeg.asking(now)
        s.legs[peer.id] = asking if leg is None else attrs.evolve(asking, retry=leg.retry)
        task = asyncio.create_task(self._allocate(peer, session), name=f"udp-ask-{peer.name}")
        s.asks[peer.id] = task

        def done(finished: asyncio.Task[None], key: str = peer.id) -> None:
            if s.asks.get(key) is finished:  # not a newer ask for the same peer
                del s.asks[key]

        task.add_done_callback(done)

    async def _allocate(self, peer: PeerEntry, session: RelaySession) -> None:
        s = self.state
        try:
            grant = await session.allocate_udp(peer.id)
            endpoint = granted_endpoint(grant, peer.id)
        except AllocationRefusedError as exc:
            _log.info("relay.udp_refused", peer=peer.name, reason=exc.reason)
            s.unavailable = s.unavailable or exc.reason == "unavailable"
            self._refused(peer.id)
            return
        except (RustynetError, ValueError) as exc:
            _log.info("relay.udp_ask_failed", peer=peer.name, error=str(exc)[:120])
            self._refused(peer.id)
            return
        if peer.id not in s.legs or s.session is not session:
            return  # forgotten meanwhile (left the relay path, new session)
        s.pending[peer.id] = (grant, endpoint)
        s.granted[endpoint] = None
        while len(s.granted) > MAX_REMEMBERED:
            del s.granted[next(iter(s.granted))]

    def _refused(self, peer_id: str) -> None:
        self.state.pending.pop(peer_id, None)
        leg = self.state.legs.get(peer_id)
        if leg is not None:
            self.state.legs[peer_id] = legs.refused(self.policy, leg, self._now())


def granted_endpoint(grant: UdpGrant, peer_id: str) -> UnderlayEndpoint:
    """The relay address a grant points the tunnel at, checked: the grant is for this peer and
    the address is a unicast one a relay can serve (never loopback, link-local, multicast or
    unspecified). Raises `RustynetError` (`DecodeError`) or `ValueError` otherwise."""
    if grant.peer != peer_id:
        raise DecodeError("the relay granted an allocation for another peer")
    address = ipaddress.ip_address(grant.relay_address)
    if (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
    ):
        raise DecodeError("the relay granted an address no relay serves")
    return UnderlayEndpoint(address, grant.relay_port)


__all__ = ["LegState", "UdpRelayLegs", "granted_endpoint"]
